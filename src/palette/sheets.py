"""Picture sheets: one row per input, ``input | sample 1 .. k | ground truth``, written as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .data import load_image, resize
from .imagefile import to_pil
from .tasks import PAIRED, Sample, make_task, sample_tasks


def visible_input(x: torch.Tensor, mask: torch.Tensor, masked: bool) -> torch.Tensor:
    """What a person should see of the model input: the noise in a hole is shown as flat grey."""
    return x * (1 - mask) if masked else x


def center_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """The centred largest square of a (C, H, W) image, resized to ``size``."""
    _, h, w = image.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize(image[:, top : top + s, left : left + s], size)


def compose_sheet(rows: Sequence[Sequence[torch.Tensor]], headers: Sequence[str], scale: int = 1) -> Image.Image:
    """A grid of equally sized images with a header row of column names."""
    tiles = [[to_pil(t).convert("RGB") for t in row] for row in rows]
    w, h = tiles[0][0].size
    w, h = w * scale, h * scale
    pad, head = 4, 16
    columns = max(len(r) for r in tiles)
    sheet = Image.new("RGB", (pad + columns * (w + pad), head + pad + len(tiles) * (h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(headers[:columns]):
        draw.text((pad + c * (w + pad), 2), name[: max(1, (w + pad) // 6)], fill="black")
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            sheet.paste(tile.resize((w, h), Image.NEAREST), (pad + c * (w + pad), head + pad + r * (h + pad)))
    return sheet


@torch.no_grad()
def task_sheet(model, task_name: str, targets: torch.Tensor, num_samples: int, seed: int, steps: int | None,
               device: torch.device, progress: bool = False) -> Image.Image:
    """Degrade ``targets`` (N, C, H, W) with ``task_name`` (fixed seed) and sample each ``num_samples`` times."""
    task = make_task(task_name)
    examples = [task(y, np.random.default_rng([seed, i])) for i, y in enumerate(targets)]
    return examples_sheet(model, task_name, examples, task.masked, num_samples, seed, steps, device, progress)


@torch.no_grad()
def examples_sheet(model, name: str, examples: Sequence[Sample], masked: bool, num_samples: int, seed: int,
                   steps: int | None, device: torch.device, progress: bool = False) -> Image.Image:
    """Sample each example's x ``num_samples`` times: one row of input | samples | ground truth per example."""
    from tqdm.auto import tqdm

    x = torch.stack([e.x for e in examples]).repeat_interleave(num_samples, 0).to(device)
    mask = torch.stack([e.mask for e in examples]).repeat_interleave(num_samples, 0).to(device)
    known = torch.stack([e.y for e in examples]).repeat_interleave(num_samples, 0).to(device)
    seeds = [seed * 1000 + i for i in range(x.shape[0])]
    steps = steps or model.config.diffusion.sample_steps
    with tqdm(total=steps, desc=f"sample {name}", unit="step", disable=not progress, leave=False) as bar:
        out = model.sample(x, mask if masked else None, known if masked else None, steps=steps,
                           seeds=seeds, callback=lambda *a: bar.update(1))
    rows = []
    for i, e in enumerate(examples):
        samples = list(out[i * num_samples : (i + 1) * num_samples])
        rows.append([visible_input(e.x, e.mask, masked), *samples, e.y])
    headers = ["input", *(f"sample {k + 1}" for k in range(num_samples)), "truth"]
    return compose_sheet(rows, headers, scale=max(1, 128 // examples[0].y.shape[-1]))


def training_sheet(model, items: Sequence, config, out_dir: Path, prefix: str, device: torch.device,
                   progress: bool = False) -> list[Path]:
    """One sheet per task the model can do, on the first ``train.sheet_images`` images (or pairs) of the data."""
    size, channels = config.model.image_size, config.model.channels
    items = list(items)[: config.train.sheet_images]
    sheets = {}
    if config.task.name == PAIRED:
        source_channels = config.model.condition_channels
        examples = []
        for source, target in items:
            y = center_square(load_image(target, channels), size) * 2 - 1
            x = center_square(load_image(source, source_channels), size) * 2 - 1
            examples.append(Sample(x, y, torch.ones((1, size, size))))
        sheets[PAIRED] = examples_sheet(model, PAIRED, examples, False, config.train.sheet_samples,
                                        config.train.seed, None, device, progress)
    else:
        targets = torch.stack([center_square(load_image(p, channels), size) * 2 - 1 for p in items])
        for name in sample_tasks(config.task.name, config.task.tasks):
            sheets[name] = task_sheet(model, name, targets, config.train.sheet_samples, config.train.seed, None,
                                      device, progress)
    written = []
    for name, sheet in sheets.items():
        path = Path(out_dir) / f"{prefix}_{name}.png"
        sheet.save(path)
        written.append(path)
    return written
