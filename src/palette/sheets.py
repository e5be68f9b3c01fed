"""Picture sheets: one row per input, ``input | sample 1 .. k | ground truth``, written as PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .data import load_image, resize
from .data_files import Item, item_files_with_channels
from .conditions import Condition
from .imagefile import to_pil
from .sampling import network_calls, sample_conditions
from .sampling_options import SamplingOptions
from .tasks import Task, make_task, sample_tasks


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
    """Row ``index`` of sheet ``sheet``: a condition to sample, whose known image is the row's ground truth."""

    sheet: str
    index: int
    condition: Condition

    @classmethod
    def of_task(cls, task: Task, index: int, images: Sequence[torch.Tensor], seed: int) -> "SheetRow":
        """Row ``index`` of ``task``'s sheet: its example of ``images``, drawn with the seed (``seed``, index)."""
        example = task.example(images, np.random.default_rng([seed, index]))
        return cls(task.name, index, Condition.of_example(example, task.masked))

    @property
    def key(self) -> str:
        """The row's key in :func:`~palette.sampling.sample_seed`: the same however rows are shared out."""
        return f"{self.sheet}/{self.index}"


@torch.no_grad()
def task_sheet(model, task_name: str, targets: torch.Tensor, options: SamplingOptions,
               progress: bool = False) -> Image.Image:
    """Degrade ``targets`` (N, C, H, W) with ``task_name`` (fixed seed) and sample each ``options.num_samples``
    times: one row of input | samples | ground truth per target."""
    task = make_task(task_name)
    rows = [SheetRow.of_task(task, i, (y,), options.seed) for i, y in enumerate(targets)]
    return compose_rows(rows, sample_rows(model, rows, options, progress))


@torch.no_grad()
def sample_rows(model, rows: Sequence[SheetRow], options: SamplingOptions,
                progress: bool = False) -> list[list[torch.Tensor]]:
    """The samples (on the CPU) of each row's input, ``options.batch_size`` images per network call. Sample k of a
    row is seeded by (``options.seed``, the row's key, k), so a sheet is the same however its rows are shared out
    over batches or processes (up to floating-point rounding, which on a GPU can depend on the batch)."""
    from tqdm.auto import tqdm

    if not rows:
        return []
    options = options.resolved(model.config)
    conditions = [r.condition for r in rows]
    names = ", ".join(dict.fromkeys(r.sheet for r in rows))
    with tqdm(total=network_calls(conditions, options), desc=f"sample {names}", unit="step", disable=not progress,
              leave=False) as bar:
        results = sample_conditions(model, conditions, options, keys=[r.key for r in rows],
                                    on_step=lambda: bar.update(1))
    return [[sample for sample, _ in samples] for samples in results]


def compose_rows(rows: Sequence[SheetRow], samples: Sequence[Sequence[torch.Tensor]]) -> Image.Image:
    """One sheet: per row, input | samples | ground truth."""
    num_samples = len(samples[0])
    grid = [[r.condition.as_seen(), *s, r.condition.original] for r, s in zip(rows, samples)]
    headers = ["input", *(f"sample {k + 1}" for k in range(num_samples)), "truth"]
    return compose_sheet(grid, headers, scale=max(1, 128 // rows[0].condition.original.shape[-1]))


def training_rows(items: Sequence[Item], config) -> list[SheetRow]:
    """The rows of every sheet of a training run: the first ``train.sheet_images`` items of the data (images, or
    pairs), centre-cropped, made an example of by each task the model can do (with seeds fixed by ``train.seed``)."""
    size, channels, seed = config.model.image_size, config.model.channels, config.train.seed
    decoded = [[center_square(load_image(path, c), size) * 2 - 1
                for path, c in item_files_with_channels(item, channels, config.model.condition_channels)]
               for item in list(items)[: config.train.sheet_images]]
    return [SheetRow.of_task(make_task(name), i, images, seed)
            for name in sample_tasks(config.task.name, config.task.tasks) for i, images in enumerate(decoded)]


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
