"""``palette demo``: one sheet per task of a tiny multi-task model on photos it never trained on.

By default the sheets come from the demo model that ships inside the package (``palette:demo``, trained for hours on
a CPU; its provenance is in its file's header), so they take seconds. ``--train`` trains the same kind of model from
scratch instead (minutes), into ``OUT/run``.

The photos are scikit-image's astronaut, coffee, chelsea, rocket, motorcycle, hubble and immunohistochemistry,
scikit-learn's china and flower, and matplotlib's grace_hopper. Two of them are held out of training and the
sheets show the model on random crops of those two: input | samples | ground truth, one sheet per task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import checkpoint as ckpt, run_folder
from .config import Config, apply_overrides, preset
from .crops import random_square_crop
from .data import load_image
from .errors import ArgumentError, PaletteError
from .model import PaletteModel
from .sampling_options import SamplingOptions
from .sheets import task_sheet
from .tasks import PAPER_TASKS, TASK_NAMES

log = logging.getLogger(__name__)

HELD_OUT = ("chelsea", "grace_hopper")
# the demo's sampler: on the demo model as good as the paper's ancestral sampler at 200 steps for inpainting and
# uncropping, better for JPEG, and 9-11 times faster (benchmarks/results/demo_quality.md); the paper's stays
# available: --sampler ancestral --sample-steps 1000
DEMO_SAMPLER, DEMO_SAMPLE_STEPS = "dpmpp-2m-sde", 20


def wheel_photos() -> dict[str, np.ndarray]:
    """The ten sample photos, as uint8 RGB arrays, read from the installed packages (no download)."""
    try:  # the demo extra: these wheels are needed only for their photos
        import matplotlib.cbook
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError as err:
        package = (err.name or "").split(".")[0]
        missing = {"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(package, package or "one of them")
        raise PaletteError(f"the demo's photos ship inside the wheels of the demo extra, and {missing} is not "
                           "installed: pip install 'palette-diffusion[demo]' (in a clone: pip install -e '.[demo]')"
                           ) from None

    photos = {name: getattr(skimage.data, name)() for name in
              ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")}
    photos["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    sklearn_images = load_sample_images()
    for filename, image in zip(sklearn_images.filenames, sklearn_images.images):
        photos[Path(filename).stem] = image
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        photos["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    return photos


def write_photos(folder: Path) -> tuple[list[Path], list[Path]]:
    """Write the photos as PNG; returns (training files, held-out files)."""
    train_dir, held_dir = folder / "train", folder / "held_out"
    train_dir.mkdir(parents=True, exist_ok=True)
    held_dir.mkdir(parents=True, exist_ok=True)
    train, held = [], []
    for name, array in wheel_photos().items():
        target = (held_dir if name in HELD_OUT else train_dir) / f"{name}.png"
        if not target.exists():
            Image.fromarray(array).save(target)
        (held if name in HELD_OUT else train).append(target)
    return train, held


def demo_config(out: Path, steps: int, device: str, tasks: Sequence[str], overrides: Sequence[str]) -> Config:
    """The demo model's training config: ``tiny`` at 32 px, one multi-task model, random crops of the photos."""
    return apply_overrides(preset("tiny"), [
        f"data.path={out / 'photos' / 'train'}", "task.name=multi", f"task.tasks={','.join(tasks)}",
        f"train.steps={steps}", "data.crop_scale_min=0.25", f"train.device={device}",
        f"train.checkpoint_every={max(1, steps // 4)}", "train.sample_every=0",
        f"diffusion.sampler={DEMO_SAMPLER}", f"diffusion.sample_steps={DEMO_SAMPLE_STEPS}", *overrides,
    ])


def train_demo_model(out: Path, steps: int, device: str, tasks: Sequence[str], overrides: Sequence[str],
                     progress: bool) -> PaletteModel:
    """Train (or resume) the demo model in ``out/run``; returns its EMA network, ready to sample."""
    from .train import Trainer

    config = demo_config(out, steps, device, tasks, overrides)
    run_dir = out / "run"
    trainer = Trainer(config, run_dir, resume=run_folder.latest_checkpoint(run_dir) is not None, progress=progress)
    trainer.fit()
    model = PaletteModel(trainer.config).to(trainer.device)
    model.net.load_state_dict(trainer.ema_state_dict())
    return model.eval()


def packaged_model(device: str, tasks: Sequence[str], overrides: Sequence[str]) -> PaletteModel:
    """The demo model that ships inside the package, checked against the tasks asked for."""
    from .sampling import load_model

    if overrides:
        raise ArgumentError("train", f"is off, but {overrides[0]} configures training: turn it on to train a demo "
                            "model with key=value settings")
    model = load_model(ckpt.DEMO_CHECKPOINT, device)
    missing = [t for t in tasks if t not in model.config.task.tasks]
    if missing:
        raise ArgumentError("tasks", f"{','.join(missing)}: the packaged demo model does "
                            f"{', '.join(model.config.task.tasks)}; other tasks need a demo model trained for them "
                            "(with {train})", also=("train",))
    return model


def held_out_crops(files: Sequence[Path], size: int, rows: int) -> torch.Tensor:
    """``rows`` random square crops of the held-out photos, in [-1, 1] (the same crops on every run)."""
    rng = np.random.default_rng(1234)
    return torch.stack([random_square_crop(load_image(files[i % len(files)]), size, rng, scale_min=0.4) * 2 - 1
                        for i in range(rows)])


def check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if not tasks or unknown or len(set(tasks)) != len(tasks):
        raise ArgumentError("tasks", f"{','.join(tasks)}: name each task once, from {', '.join(TASK_NAMES)}")
    return tasks


def run_demo(out: Path, train: bool = False, steps: int = 1000, sample_steps: int | None = None,
             sampler: str | None = None, num_samples: int = 3, rows: int = 4, device: str = "auto",
             overrides: Sequence[str] = (), progress: bool = True, tasks: Sequence[str] = PAPER_TASKS) -> list[Path]:
    """Write ``out/sheet_<task>.png`` for each of ``tasks``: from the packaged demo model, or with ``train`` from a
    model trained (or resumed) for ``steps`` steps in ``out/run``. ``sampler`` and ``sample_steps`` default to the
    model's own (DPM-Solver++(2M) SDE, 20 steps)."""
    out, tasks = Path(out), check_tasks(tasks)
    started = time.perf_counter()
    model = None if train else packaged_model(device, tasks, overrides)  # refused before anything is written
    _, held_files = write_photos(out / "photos")
    if train:
        model = train_demo_model(out, steps, device, tasks, overrides, progress)
    trained = time.perf_counter()
    options = SamplingOptions(steps=sample_steps, sampler=sampler, num_samples=num_samples)
    targets = held_out_crops(held_files, model.config.model.image_size, rows)
    written = []
    for task in tasks:
        sheet = task_sheet(model, task, targets, options, progress)
        path = out / f"sheet_{task}.png"
        sheet.save(path)
        written.append(path)
    made = f"trained in {trained - started:.0f} s" if train else f"the packaged model {ckpt.DEMO_CHECKPOINT}"
    log.info("demo: %s, sampled in %.0f s; sheets in %s", made, time.perf_counter() - trained, out)
    return written


def package_demo_model(run_dir: Path, out_file: Path, commands: Sequence[str]) -> Path:
    """Write a run's EMA weights as the packaged demo model: its config (with the demo's sampler as the default)
    and, in the header, the training photos and the ``commands`` that trained it."""
    from .sampling import load_model

    model = load_model(run_dir, "cpu")
    config = apply_overrides(model.config, [f"diffusion.sampler={DEMO_SAMPLER}",
                                            f"diffusion.sample_steps={DEMO_SAMPLE_STEPS}", "data.path="])
    step = ckpt.read_header(ckpt.resolve_weights(run_dir)).get("step", "unknown")
    photos = sorted(name for name in wheel_photos() if name not in HELD_OUT)
    ckpt.save_weights(out_file, model.net.state_dict(), config, step=step,
                      training_photos=",".join(photos), held_out_photos=",".join(HELD_OUT),
                      commands=" && ".join(commands))
    return out_file
