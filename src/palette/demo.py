"""``palette demo``: train a tiny multi-task model on photos that ship inside installed wheels, then draw sheets.

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

from .config import apply_overrides, preset
from .data import load_image, random_square_crop
from .errors import PaletteError
from .sheets import task_sheet
from .tasks import PAPER_TASKS, TASK_NAMES
from .train import Trainer

log = logging.getLogger(__name__)

HELD_OUT = ("chelsea", "grace_hopper")


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


def run_demo(out: Path, steps: int = 1000, sample_steps: int = 200, num_samples: int = 3, rows: int = 4,
             device: str = "auto", overrides: list[str] | None = None, progress: bool = True,
             tasks: Sequence[str] = PAPER_TASKS) -> list[Path]:
    """Train the demo model for ``tasks`` (one multi-task model; the paper's four by default) into ``out/run``
    (resuming if it is there) and write ``out/sheet_<task>.png`` for each task."""
    out = Path(out)
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if not tasks or unknown or len(set(tasks)) != len(tasks):
        raise PaletteError(f"--tasks {','.join(tasks)}: name each task once, from {', '.join(TASK_NAMES)}")
    started = time.perf_counter()
    train_files, held_files = write_photos(out / "photos")
    config = apply_overrides(preset("tiny"), [
        f"data.path={out / 'photos' / 'train'}", "task.name=multi", f"task.tasks={','.join(tasks)}",
        f"train.steps={steps}", "data.crop_scale_min=0.25", f"train.device={device}",
        f"train.checkpoint_every={max(1, steps // 4)}", "train.sample_every=0", f"diffusion.sample_steps={sample_steps}",
        *(overrides or []),
    ])
    run_dir = out / "run"
    from .checkpoint import latest_checkpoint

    trainer = Trainer(config, run_dir, resume=latest_checkpoint(run_dir) is not None, progress=progress)
    trainer.fit()
    trained = time.perf_counter()

    from .model import PaletteModel

    model = PaletteModel(config).to(trainer.device)
    model.net.load_state_dict(trainer.ema_state_dict())
    model.eval()
    rng = np.random.default_rng(1234)
    size = config.model.image_size
    targets = torch.stack([
        random_square_crop(load_image(held_files[i % len(held_files)]), size, rng, scale_min=0.4) * 2 - 1
        for i in range(rows)
    ])
    written = []
    for task in tasks:
        sheet = task_sheet(model, task, targets, num_samples, seed=0, steps=sample_steps, device=trainer.device,
                           progress=progress)
        path = out / f"sheet_{task}.png"
        sheet.save(path)
        written.append(path)
    log.info("demo: trained in %.0f s, sampled in %.0f s; sheets in %s", trained - started,
             time.perf_counter() - trained, out)
    return written
