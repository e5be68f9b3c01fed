"""The Python API: every task with every input type, shapes, ranges, seeds and errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from palette import Palette, PaletteError


@pytest.fixture(scope="module")
def palette(trained_run):
    return Palette.load(trained_run, device="cpu")


@pytest.fixture(scope="module")
def photo(photo_dir):
    return Image.open(photo_dir / "chelsea.png").convert("RGB")  # 48x40


def _inputs(photo):
    array = np.asarray(photo)
    return {
        "pil": photo,
        "uint8": array,
        "uint16": array.astype(np.uint16) * 257,
        "float": array.astype(np.float32) / 255,
        "tensor": torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255,
        "gray": np.asarray(photo.convert("L")),
    }


@pytest.mark.parametrize("kind", ["pil", "uint8", "uint16", "float", "tensor", "gray"])
@pytest.mark.parametrize("task", ["colorization", "inpainting", "uncropping", "jpeg"])
def test_every_task_takes_every_input_type(palette, photo, kind, task):
    image = _inputs(photo)[kind]
    kwargs = {"mask": "center"} if task == "inpainting" else {}
    samples = palette(image, task, num_samples=2, steps=2, **kwargs)
    assert len(samples) == 2 and all(isinstance(s, Image.Image) and s.size == (48, 40) for s in samples)


def test_tensor_output_is_in_0_1_at_the_input_size(palette, photo):
    out = palette.colorize(photo, steps=2, output="tensor", num_samples=3)
    assert len(out) == 3 and all(t.shape == (3, 40, 48) and t.min() >= 0 and t.max() <= 1 for t in out)


def test_a_batch_gives_one_list_per_input(palette, photo):
    batch = np.stack([np.asarray(photo)] * 3)
    out = palette.restore_jpeg(batch, steps=2, num_samples=2)
    assert len(out) == 3 and all(len(s) == 2 for s in out)
    assert len(palette.uncrop([photo, photo.resize((32, 32))], side="top", steps=2)) == 2


def test_inpaint_keeps_pixels_outside_the_mask(palette, photo):
    mask = np.zeros((40, 48), bool)
    mask[10:30, 5:25] = True
    out = np.asarray(palette.inpaint(photo, mask, steps=3)[0])
    assert np.array_equal(out[~mask], np.asarray(photo)[~mask])


def test_same_seed_same_images(palette, photo):
    a = palette.inpaint(photo, "freeform-20-30", steps=3, seed=4, output="tensor")[0]
    b = palette.inpaint(photo, "freeform-20-30", steps=3, seed=4, output="tensor")[0]
    c = palette.inpaint(photo, "freeform-20-30", steps=3, seed=5, output="tensor")[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_progress_reaches_the_total(palette, photo):
    seen = []
    palette.colorize([photo, photo], steps=3, num_samples=2, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (3, 3) and len(seen) == 3  # 4 images in one batch of 16: 3 network calls


@pytest.mark.parametrize("call,match", [
    (lambda p, img: p.inpaint(img, np.zeros((5, 5), bool)), "mask is 5x5 but the image is 48x40"),
    (lambda p, img: p(img, "deblur"), "task 'deblur' is unknown"),
    (lambda p, img: p.inpaint(img, None), "mask is needed for inpainting"),
    (lambda p, img: p.colorize(img, num_samples=0), "num_samples must be at least 1"),
    (lambda p, img: p.colorize(img, steps=0), "steps must be between 1"),
    (lambda p, img: p.colorize(img, sampler="euler"), "sampler must be one of"),
    (lambda p, img: p.colorize("not an image object".encode()), "expected a PIL image"),
    (lambda p, img: p.super_resolve(img, factor=3), "factor must be 2 or 4"),
    (lambda p, img: p.uncrop(img, side="diagonal"), "side must be one of left, right, top, bottom, all"),
])
def test_errors_are_clear(palette, photo, call, match):
    with pytest.raises(PaletteError, match=match):
        call(palette, photo)


def test_an_unloadable_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(PaletteError, match="not a readable safetensors file"):
        Palette.load(tmp_path / "model.safetensors", device="cpu")


def test_a_thin_stroke_on_a_large_image_is_still_generated(palette):
    from palette.conditions import make_condition

    image = torch.rand(3, 256, 256)
    mask = np.zeros((256, 256), bool)
    mask[:, 100] = True  # one pixel wide: 1/16 of a model pixel of the 16px model
    size = palette.model.config.model.image_size
    condition = make_condition(size, "inpainting", image, np.random.default_rng(0), mask)
    assert condition.mask[0, :, 100 * 16 // 256].all()
    out = palette.inpaint(image, mask, steps=2, output="tensor")[0]
    torch.testing.assert_close(out[:, ~torch.from_numpy(mask)], image[:, ~torch.from_numpy(mask)], atol=1 / 255, rtol=0)


def test_super_resolution_deblurring_and_denoising(palette, photo):
    small = photo.resize((24, 20))
    assert palette.super_resolve(small, factor=2, steps=2)[0].size == (48, 40)
    assert palette(small, "sr-x4", steps=2, output="tensor")[0].shape == (3, 80, 96)
    assert palette.deblur(photo, steps=2)[0].size == (48, 40)
    assert palette.denoise([photo, small], steps=2, num_samples=2)[1][1].size == (24, 20)
