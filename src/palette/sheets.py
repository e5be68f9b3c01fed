"""Picture sheets: one row per input, ``input | sample 1 .. k | ground truth``, written as PNG."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class SheetRow:
    """Row ``index`` of sheet ``sheet``: an example whose input is sampled (with its mask where ``masked``)."""

    sheet: str
    index: int
    example: Sample
    masked: bool


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
    rows = [SheetRow(name, i, e, masked) for i, e in enumerate(examples)]
    return compose_rows(rows, sample_rows(model, rows, num_samples, seed, steps, device, progress))


@torch.no_grad()
def sample_rows(model, rows: Sequence[SheetRow], num_samples: int, seed: int, steps: int | None,
                device: torch.device, progress: bool = False, max_batch: int | None = None) -> list[list[torch.Tensor]]:
    """The ``num_samples`` samples (on the CPU) of each row's input, in batches of at most ``max_batch`` images
    (default: all rows at once). Sample k of row i of a sheet has the seed ``seed * 1000 + i * num_samples + k``, so
    a sheet is the same however its rows are shared out over batches or processes (up to floating-point rounding,
    which on a GPU can depend on the batch)."""
    from tqdm.auto import tqdm

    if not rows:
        return []
    per_batch = len(rows) if max_batch is None else max(1, max_batch // num_samples)
    if per_batch < len(rows):
        return [samples for start in range(0, len(rows), per_batch)
                for samples in sample_rows(model, rows[start : start + per_batch], num_samples, seed, steps, device,
                                           progress)]

    def stacked(get) -> torch.Tensor:
        return torch.stack([get(r) for r in rows]).repeat_interleave(num_samples, 0).to(device)

    x = stacked(lambda r: r.example.x)
    # mask 1 = generated: an unmasked task's row generates everywhere, as with no mask at all
    mask = stacked(lambda r: r.example.mask if r.masked else torch.ones_like(r.example.mask[:1]))
    known = stacked(lambda r: r.example.y)
    seeds = [seed * 1000 + r.index * num_samples + k for r in rows for k in range(num_samples)]
    steps = steps or model.config.diffusion.sample_steps
    any_masked = any(r.masked for r in rows)
    names = ", ".join(dict.fromkeys(r.sheet for r in rows))
    with tqdm(total=steps, desc=f"sample {names}", unit="step", disable=not progress, leave=False) as bar:
        out = model.sample(x, mask if any_masked else None, known if any_masked else None, steps=steps, seeds=seeds,
                           callback=lambda *a: bar.update(1)).cpu()
    return [list(out[i * num_samples : (i + 1) * num_samples]) for i in range(len(rows))]


def compose_rows(rows: Sequence[SheetRow], samples: Sequence[Sequence[torch.Tensor]]) -> Image.Image:
    """One sheet: per row, input | samples | ground truth."""
    num_samples = len(samples[0])
    grid = [[visible_input(r.example.x, r.example.mask, r.masked), *s, r.example.y] for r, s in zip(rows, samples)]
    headers = ["input", *(f"sample {k + 1}" for k in range(num_samples)), "truth"]
    return compose_sheet(grid, headers, scale=max(1, 128 // rows[0].example.y.shape[-1]))


def training_rows(items: Sequence, config) -> list[SheetRow]:
    """The rows of every sheet of a training run: the first ``train.sheet_images`` images (or pairs) of the data,
    degraded by each task the model can do (with seeds fixed by ``train.seed``)."""
    size, channels, seed = config.model.image_size, config.model.channels, config.train.seed
    items = list(items)[: config.train.sheet_images]
    if config.task.name == PAIRED:
        source_channels = config.model.condition_channels
        rows = []
        for i, (source, target) in enumerate(items):
            y = center_square(load_image(target, channels), size) * 2 - 1
            x = center_square(load_image(source, source_channels), size) * 2 - 1
            rows.append(SheetRow(PAIRED, i, Sample(x, y, torch.ones((1, size, size))), False))
        return rows
    targets = [center_square(load_image(p, channels), size) * 2 - 1 for p in items]
    rows = []
    for name in sample_tasks(config.task.name, config.task.tasks):
        task = make_task(name)
        rows += [SheetRow(name, i, task(y, np.random.default_rng([seed, i])), task.masked)
                 for i, y in enumerate(targets)]
    return rows


def write_training_sheets(rows: Sequence[SheetRow], samples: Sequence[Sequence[torch.Tensor]], out_dir: Path,
                          prefix: str) -> list[Path]:
    """``out_dir/{prefix}_{sheet}.png`` for each sheet of ``rows`` (in order), from the rows' samples."""
    written = []
    for name in dict.fromkeys(r.sheet for r in rows):
        picked = [(r, s) for r, s in zip(rows, samples, strict=True) if r.sheet == name]
        path = Path(out_dir) / f"{prefix}_{name}.png"
        compose_rows([r for r, _ in picked], [s for _, s in picked]).save(path)
        written.append(path)
    return written
