"""Sampling a trained model on image files: what ``palette sample`` does.

Each input is resized to the model's size, sampled, and the samples are resized back to the input's size (times the
factor for super-resolution, whose input is first bicubic-upsampled as in SR3), or, with tiling, sampled at its own
size in overlapping tiles (:mod:`palette.tiling`). For inpainting and uncropping the known pixels of the output come
from the input file at full resolution; only the hole is generated. A colorization resized to the model keeps the
input's own full-resolution luma and takes the sample's chroma (upscaled), so a small model still colours a large
photo without blurring it; at the model's size the output is the model's, as in the paper.

Sample k of an input is seeded by (seed, the input's key, k) (:func:`sample_seed`): the key is the file's name for
``palette sample`` and the image's index for ``palette eval``, so no two inputs share noise and an input's samples do
not depend on the other files of a folder, on the batch, on the shard or on the process that draws them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import checkpoint as ckpt
from .conditions import Condition, make_condition, resolve_mask
from .data import IMAGE_EXTENSIONS, load_image, resize
from .devices import configure_cuda, resolve_device
from .errors import ArgumentError, PaletteError
from .imagefile import DEFAULT_MAX_PIXELS, probe, save_image
from .model import PaletteModel
from .sampling_options import SamplingOptions
from .tasks import PAIRED, TASK_NAMES, sample_tasks

log = logging.getLogger(__name__)


def load_model(path: str | Path, device: str | torch.device = "auto", use_ema: bool = True) -> PaletteModel:
    """A model from a run folder, a checkpoint folder or a weights file (EMA weights by default).

    On a CUDA device this also turns on cuDNN's algorithm search and TF32 as training does (:func:`configure_cuda`),
    unless the run's config turned them off.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    weights = ckpt.resolve_weights(path, use_ema)
    tensors, metadata = ckpt.read_weights(weights)
    config = ckpt.config_of(metadata, weights)
    if device.type == "cuda":
        configure_cuda(config.train.cudnn_benchmark, config.train.tf32)
    model = PaletteModel(config)
    try:
        model.net.load_state_dict(tensors)
    except RuntimeError as err:
        raise PaletteError(f"checkpoint {weights} does not match its own config: {str(err)[:300]}") from None
    return model.to(device).eval()


def check_task(model: PaletteModel, task: str, where: str = "checkpoint", argument: str | None = "task") -> None:
    """An error unless ``model`` can do ``task``: an ArgumentError naming ``argument``, or, when the task is not the
    caller's choice (a panorama uncrops), a PaletteError."""
    if task not in (*TASK_NAMES, PAIRED):
        raise ArgumentError("task", f"{task!r} is unknown: choose one of {', '.join((*TASK_NAMES, PAIRED))}")
    can = sample_tasks(model.config.task.name, model.config.task.tasks)
    if task not in can:
        problem = f"the {where} was trained for {model.config.task.name} ({', '.join(can)}) and cannot do {task}"
        raise PaletteError(problem) if argument is None else ArgumentError(argument, f"{task}: {problem}")


def input_files(source: str | Path) -> list[Path]:
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise ArgumentError("images", f"{source}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    raise ArgumentError("images", f"{source}: no such file or folder")


def output_stems(inputs: Sequence[Path]) -> list[str]:
    """The stem of each input's output files: the file's own, or with its extension (a_png, a_jpg) where inputs share
    a stem (compared without case, as some file systems do); an ArgumentError where names would still collide."""
    counts = Counter(path.stem.casefold() for path in inputs)
    stems = [path.stem if counts[path.stem.casefold()] == 1 else f"{path.stem}_{path.suffix.lstrip('.')}"
             for path in inputs]
    owners: dict[str, Path] = {}
    for path, stem in zip(inputs, stems):
        other = owners.setdefault(stem.casefold(), path)
        if other != path:
            raise ArgumentError("images", f": {other} and {path} would both write {stem}_0.png: rename one of them")
    return stems


def input_key(key: int | str) -> int:
    """An input's key as an integer: an index as it is, a name by the first 8 bytes of its SHA-256."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") if isinstance(key, str) else key


def sample_seed(seed: int, key: int | str, k: int) -> int:
    """The seed of sample ``k`` of the input ``key`` (an index, or a name such as a file's) in a run seeded ``seed``.

    SeedSequence mixes the three into one 64-bit seed, so inputs never share noise (seeding every input with
    ``seed + k`` gave image 0 and image 9,999 of an evaluation the same y_T and the same draw at every step).
    """
    key = input_key(key)
    if seed < 0 or key < 0 or k < 0:
        raise ValueError(f"seeds must be non-negative, got seed {seed}, key {key}, sample {k}")
    return int(np.random.SeedSequence([seed, key, k]).generate_state(1, np.uint64)[0])


def sample_conditions(
    model: PaletteModel,
    conditions: Sequence[Condition],
    options: SamplingOptions,
    keys: Sequence[int | str] | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """Sample every condition ``options.num_samples`` times, ``options.batch_size`` images per network call.

    Unset ``options`` take ``model``'s config values (:meth:`SamplingOptions.resolved`). Sample k of
    condition i is seeded by :func:`sample_seed` (``options.seed``, ``keys[i]``, k), the keys defaulting to the
    conditions' positions. Conditions of masked and unmasked tasks may share a batch. Returns, per condition and
    sample, the sample at the input's size in [-1, 1] and, with ``options.save_process`` = P > 0, a strip of the y0
    estimates at P evenly spaced steps (the last is the final sample).
    """
    options = options.resolved(model.config)  # as given, or resolved already: resolving again changes nothing
    keys = range(len(conditions)) if keys is None else list(keys)
    results: list[list] = [[None] * options.num_samples for _ in conditions]
    for batch in _batches(conditions, options.num_samples, options.batch_size):
        seeds = [sample_seed(options.seed, keys[i], k) for _, i, k in batch]
        samples, strips = _sample_batch(model, [c for c, _, _ in batch], seeds, options, on_step)
        for (cond, i, k), y, strip in zip(batch, samples, strips):
            results[i][k] = (cond.at_input_size(y), strip)
    return results


def _sample_batch(model: PaletteModel, batch: Sequence[Condition], seeds: list[int], options: SamplingOptions,
                  on_step: Callable[[], None] | None) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """One network batch of conditions of one shape: the samples, and each one's strip of the denoising process."""
    device = next(model.parameters()).device
    x = torch.stack([c.x for c in batch]).to(device)
    mask = known = None
    if any(c.masked for c in batch):  # an unmasked task's condition generates everywhere, as with no mask at all
        mask = torch.stack([c.mask if c.masked else torch.ones_like(c.mask[:1]) for c in batch]).to(device)
        known = torch.stack([resize(c.original, tuple(c.x.shape[1:])) for c in batch]).to(device)
    keep_at = set(np.linspace(1, options.steps, options.save_process).round().astype(int).tolist())
    snapshots: list[torch.Tensor] = []

    def callback(i, n, y, y0_hat):
        if on_step is not None:
            on_step()
        if options.save_process and i in keep_at:
            snapshots.append(y0_hat.detach().cpu() if i < n else y.detach().cpu())

    out = model.sample(x, mask, known, seeds=seeds, callback=callback,
                       options=dataclasses.replace(options, tile=batch[0].tile_overlap is not None,
                                                   overlap=batch[0].tile_overlap))
    strips = [torch.cat([snap[j] for snap in snapshots], dim=2) if snapshots else None for j in range(len(batch))]
    return out, strips


def _batches(conditions: Sequence[Condition], num_samples: int, batch_size: int) -> list[list]:
    """The (condition, index, sample number) jobs in batches of at most ``batch_size`` whose inputs have one shape
    (tiled images differ in size) and one tiling."""
    batches: list[list] = []
    for i, c in enumerate(conditions):
        for k in range(num_samples):
            last = batches[-1][0][0] if batches else None
            if last is not None and len(batches[-1]) < max(1, batch_size) and (last.x.shape, last.tile_overlap) == (
                    c.x.shape, c.tile_overlap):
                batches[-1].append((c, i, k))
            else:
                batches.append([(c, i, k)])
    return batches


def network_calls(conditions: Sequence[Condition], options: SamplingOptions) -> int:
    """How many times :func:`sample_conditions` calls ``on_step``: batches x steps (of resolved ``options``)."""
    return len(_batches(conditions, options.num_samples, options.batch_size)) * options.steps


def sample_files(
    model: PaletteModel,
    task: str,
    inputs: Sequence[Path],
    out_dir: Path,
    options: SamplingOptions | None = None,
    mask: Path | str | None = None,
    side: str = "right",
    progress: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    stems: Sequence[str] | None = None,
    **settings: Any,
) -> list[Path]:
    """Write ``<stem>_<k>.png`` for each sample k and ``<stem>_input.png`` for each input; returns the samples.

    ``options`` (or the :class:`SamplingOptions` ``settings`` such as ``steps=20``) say how to sample; ``stems``
    default to :func:`output_stems` of ``inputs``. Every input is read (a file above ``max_pixels`` pixels is refused
    from its header) before anything is written. They are 16-bit PNG files when the input file or the model's
    training targets have 16-bit samples. With ``options.tile`` each image is sampled at its own size in overlapping
    tiles of the model's size. With ``options.save_process`` = P > 0, also ``<stem>_<k>_process.png``: a strip of the
    y0 estimates at P evenly spaced steps, the last being the final sample (the paper's figures of the process).
    """
    from tqdm.auto import tqdm

    check_task(model, task)
    options = SamplingOptions.of(options, **settings).resolved(model.config)
    stems = output_stems(inputs) if stems is None else list(stems)
    conditions, bits = _read_inputs(model, task, inputs, options, mask, side, max_pixels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stem, cond, depth in zip(stems, conditions, bits):
        save_image(cond.as_seen(), out_dir / f"{stem}_input.png", depth)
    total = network_calls(conditions, options)
    with tqdm(total=total, desc=f"sample {task}", unit="step", disable=not progress) as bar:
        results = sample_conditions(model, conditions, options, keys=[path.name for path in inputs],
                                    on_step=lambda: bar.update(1))
    written = []
    for stem, depth, samples in zip(stems, bits, results):
        for k, (sample, strip) in enumerate(samples):
            written.append(out_dir / f"{stem}_{k}.png")
            save_image(sample, written[-1], depth)
            if strip is not None:
                save_image(strip, out_dir / f"{stem}_{k}_process.png")
    return written


def _read_inputs(model: PaletteModel, task: str, inputs: Sequence[Path], options: SamplingOptions,
                 mask: Path | str | None, side: str, max_pixels: int | None) -> tuple[list[Condition], list[int]]:
    """Each input file's condition and the bit depth its outputs are written with."""
    channels = model.config.model.condition_channels
    conditions, bits = [], []
    for path in inputs:
        try:
            image = load_image(path, channels, max_pixels)
            depth = max(probe(path, max_pixels).bits, model.config.data.target_bits)
        except (OSError, ValueError) as err:
            raise ArgumentError("images", f"{path}: cannot be read as an image ({err})") from None
        rng = np.random.default_rng([options.seed, input_key(path.name)])  # the file's own mask and degradation
        conditions.append(make_condition(model.config.model.image_size, task, image, rng, resolve_mask(mask, image),
                                         side, options.tile_overlap))
        bits.append(depth)
    return conditions, bits
