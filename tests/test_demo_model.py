"""The demo model that ships inside the package (``palette:demo``): found by name everywhere a checkpoint is, with
its provenance in its header, and a model that does the job on photos it never trained on."""

import numpy as np
import pytest
import torch
from safetensors import safe_open

from palette.checkpoint import DEMO_CHECKPOINT, demo_weights, resolve_weights
from palette.demo import DEMO_SAMPLE_STEPS, DEMO_SAMPLER, HELD_OUT, held_out_crops, write_photos
from palette.errors import PaletteError
from palette.metrics import chroma_distance, high_frequency_energy
from palette.sampling import load_model
from palette.tasks import PAPER_TASKS, Colorization, make_task


@pytest.fixture(scope="module")
def demo_model():
    return load_model(DEMO_CHECKPOINT, "cpu")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, demo_model):
    """Crops of the two photos the demo model never trained on (the crops its sheets show, and four more)."""
    _, files = write_photos(tmp_path_factory.mktemp("photos"))
    return held_out_crops(files, demo_model.config.model.image_size, rows=8)


def test_the_packaged_model_is_found_by_name_and_records_how_it_was_made(demo_model):
    path = resolve_weights(DEMO_CHECKPOINT)
    assert path == demo_weights() and path.suffix == ".safetensors" and path.stat().st_size < 8e6
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys())
    training = meta["training_photos"].split(",")
    assert len(training) == 8 and not set(training) & set(HELD_OUT) and meta["held_out_photos"] == ",".join(HELD_OUT)
    assert "palette" in meta["commands"] and int(meta["step"]) >= 5000
    config = demo_model.config
    assert config.preset == "tiny" and config.task.name == "multi" and config.task.tasks == PAPER_TASKS
    assert (config.diffusion.sampler, config.diffusion.sample_steps) == (DEMO_SAMPLER, DEMO_SAMPLE_STEPS)


def test_the_python_api_loads_the_packaged_model_by_name():
    from palette import Palette

    pipe = Palette.load(DEMO_CHECKPOINT, device="cpu")
    image = np.full((40, 56, 3), 128, np.uint8)
    (out,) = pipe(image, task="jpeg", steps=2, seed=0)
    assert out.size == (56, 40)


def test_the_packaged_model_colours_held_out_crops_closer_to_the_truth_than_gray(demo_model, held_out):
    x = torch.stack([Colorization().condition(y, np.random.default_rng(0))[0] for y in held_out])
    samples = demo_model.sample(x, seeds=range(len(x)))
    gray_distance, sample_distance = chroma_distance(x, held_out), chroma_distance(samples, held_out)
    assert sample_distance < 0.8 * gray_distance, (sample_distance, gray_distance)


@pytest.mark.parametrize("task", ["inpainting", "uncropping"])
def test_the_packaged_model_fills_holes_without_speckle(demo_model, held_out, task):
    """Speckle is high-frequency energy in the generated pixels above the truth's there (an untrained or
    undertrained network through a deterministic sampler leaves several times the truth's)."""
    examples = [make_task(task)(y, np.random.default_rng([1, i])) for i, y in enumerate(held_out)]
    x, mask = torch.stack([e.x for e in examples]), torch.stack([e.mask for e in examples])
    samples = demo_model.sample(x, mask, held_out, seeds=range(len(x)))
    ratio = high_frequency_energy(samples * mask) / high_frequency_energy(held_out * mask)
    assert ratio < 1.0, ratio


def test_a_photo_larger_than_the_model_is_coloured_on_its_own_full_resolution_detail(tmp_path):
    """The model colours at 32 px; the output keeps the photo's luma at its own size (sharp), with the chroma of
    the upscaled sample, instead of the upscaled sample itself (a 32 px image blown up)."""
    from PIL import Image

    from palette import Palette
    from palette.tasks import luma

    _, files = write_photos(tmp_path)
    photo = Image.open(files[0]).convert("RGB").resize((96, 64))
    (out,) = Palette.load(DEMO_CHECKPOINT, device="cpu").colorize(photo.convert("L"), steps=4, seed=0)
    as_tensor = lambda image: torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)
    photo_luma, out_luma = luma(as_tensor(photo)), luma(as_tensor(out))
    assert out.size == (96, 64)
    assert (out_luma - photo_luma).abs().mean() < 2 / 255  # uint8 rounding, and clamping at the extremes
    chroma = as_tensor(out) - out_luma
    assert chroma.abs().mean() > 0.02  # coloured, not gray


def test_the_packaged_model_has_no_raw_weights_to_give():
    with pytest.raises(PaletteError, match="^use_ema: the packaged demo model palette:demo holds its EMA weights only$"):
        resolve_weights(DEMO_CHECKPOINT, use_ema=False)


def test_a_run_is_packaged_with_its_provenance_and_no_data_path(tmp_path, trained_run):
    from palette.demo import package_demo_model

    out = package_demo_model(trained_run, tmp_path / "demo.safetensors", ["palette demo --train --steps 3"])
    model = load_model(out, "cpu")
    assert model.config.data.path == ""  # a distillation of it must be given --data
    assert (model.config.diffusion.sampler, model.config.diffusion.sample_steps) == (DEMO_SAMPLER, DEMO_SAMPLE_STEPS)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["commands"] == "palette demo --train --steps 3" and meta["held_out_photos"] == ",".join(HELD_OUT)
    assert meta["step"] == "3"  # the run's three training steps
