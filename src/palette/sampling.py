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

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from . import checkpoint as ckpt
from . import masks
from .data import IMAGE_EXTENSIONS, load_image, resize
from .errors import PaletteError
from .imagefile import DEFAULT_MAX_PIXELS, PixelLimitError, probe, save_image
from .model import PaletteModel, check_guidance, check_student
from .samplers import SAMPLERS, SCHEDULES, check_sampler, resolve_eta
from .tasks import PAIRED, TASK_NAMES, luma, make_task, sample_tasks, with_luma
from .tiling import tile_starts
from .devices import configure_cuda, resolve_device

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


def check_task(model: PaletteModel, task: str, where: str = "checkpoint") -> None:
    if task not in (*TASK_NAMES, PAIRED):
        raise PaletteError(f"unknown task {task!r}: choose one of {', '.join((*TASK_NAMES, PAIRED))}")
    can = sample_tasks(model.config.task.name, model.config.task.tasks)
    if task not in can:
        raise PaletteError(f"the {where} was trained for {model.config.task.name} ({', '.join(can)}); it cannot do {task}")


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A mask file (white = generate) as a boolean array; a non-binary mask is thresholded at half with a warning."""
    h, w = size
    try:
        probe(path, max_pixels=h * w)  # from the header, before decoding: a mask is no larger than its image
        with Image.open(path) as img:
            gray = np.asarray(img.convert("L"))
    except PixelLimitError:
        raise PaletteError(f"--mask {path} is larger than the image ({w}x{h}): the mask must have the image's "
                           "size") from None
    except (OSError, ValueError) as err:
        raise PaletteError(f"--mask {path}: cannot be read as an image ({err})") from None
    if gray.shape != (h, w):
        raise PaletteError(
            f"--mask {path} is {gray.shape[1]}x{gray.shape[0]} but the image is {w}x{h}: the mask must have the "
            "image's size"
        )
    if not np.isin(gray, (0, 255)).all():
        log.warning("--mask %s is not binary (values other than 0 and 255): thresholded at 128", path)
    return gray >= 128


@dataclass
class Condition:
    """The model input of one image (at the model's size, or at its own when tiled), plus what is needed to put the
    output back at full size."""

    original: torch.Tensor  # (C, H, W) in [-1, 1] at the file's size
    x: torch.Tensor  # (C, S, S) at the model's size S, or the whole canvas when tiled
    mask: torch.Tensor  # (1, ...) of x's size, 1 where generated
    full_mask: torch.Tensor | None  # (1, H, W) for masked tasks
    masked: bool
    tile_overlap: int | None = None  # sampled in tiles with this overlap: x and mask are then at the canvas size
    keep_luma: bool = False  # colorization resized to the model: the output keeps the input's own luma


def tiled_canvas(height: int, width: int, size: int) -> tuple[int, int]:
    """The size an image is sampled at in tiles of ``size``: its own, or scaled up until its short side is ``size``."""
    short = min(height, width)
    if short >= size:
        return height, width
    return max(size, round(height * size / short)), max(size, round(width * size / short))


def make_condition(
    model: PaletteModel, task: str, image: torch.Tensor, rng: np.random.Generator,
    mask: np.ndarray | str | None = None, side: str = "right", tile_overlap: int | None = None,
) -> Condition:
    """Build x for ``task`` from ``image`` (C, H, W) in [0, 1] at any size.

    For super-resolution ``image`` is the low-resolution input: it is bicubic-upsampled by the factor first (SR3).
    Without ``tile_overlap`` x is at the model's size; with it, at the image's own size (scaled up if a side is
    below the model's), to be sampled in overlapping tiles.
    """
    size = model.config.model.image_size
    t = make_task(task)
    if tile_overlap is not None and task == "uncropping":
        raise PaletteError("--tile: uncropping continues the image as a whole and cannot be sampled in tiles; "
                           "use palette panorama to extend large images")
    original = image * 2 - 1
    if t.scale != 1:
        original = resize(original, (image.shape[1] * t.scale, image.shape[2] * t.scale))
    canvas = (size, size) if tile_overlap is None else tiled_canvas(*original.shape[1:], size)
    small = resize(original, canvas)
    if not t.masked:
        x, m = t.condition(small, rng)
        keep_luma = task == "colorization" and canvas != tuple(original.shape[1:])
        return Condition(original, x, m, None, False, tile_overlap, keep_luma)
    h, w = image.shape[1:]
    if task == "uncropping":
        full = masks.uncrop_mask(h, w, side)
    elif mask is None:
        raise PaletteError("inpainting needs --mask: a mask image (white = fill) or a name such as center, freeform-20-30")
    elif isinstance(mask, str):
        try:
            full = masks.named_mask(mask, h, w, rng)
        except ValueError as err:
            raise PaletteError(f"--mask {mask}: {err}") from None
    else:
        full = np.asarray(mask, dtype=bool)
        if full.shape != (h, w):
            raise PaletteError(f"the mask is {full.shape[1]}x{full.shape[0]} but the image is {w}x{h}")
    full_t = torch.from_numpy(full.astype(np.float32))[None]
    # a model pixel is generated if any part of it is in the hole, so thin strokes on large images are not lost
    small_mask = (resize(full_t, canvas) > 1e-3).float() if (h, w) != canvas else full_t
    if tile_overlap is not None and any(
        small_mask[0, top : top + size, left : left + size].all()
        for top in tile_starts(canvas[0], size, tile_overlap) for left in tile_starts(canvas[1], size, tile_overlap)
    ):
        log.warning("a hole covers a whole %d px tile: tiles see no known pixels there; large holes are better "
                    "filled without --tile", size)
    x, m = t.condition(small, rng, mask=small_mask[0].numpy().astype(bool))
    return Condition(original, x, m, full_t, True, tile_overlap)


def at_input_size(condition: Condition, sample: torch.Tensor) -> torch.Tensor:
    """A sample back at the input's size; outside the mask the input's own pixels, exactly."""
    h, w = condition.original.shape[1:]
    out = resize(sample.cpu(), (h, w)).clamp(-1, 1)
    if condition.keep_luma:  # the sampled colours on the input's full-resolution detail, not an upscaled sample's
        out = with_luma(out, luma(condition.original))
    if condition.masked:
        out = out * condition.full_mask + condition.original * (1 - condition.full_mask)
    return out


def input_files(source: str | Path) -> list[Path]:
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise PaletteError(f"--input {source}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    raise PaletteError(f"--input {source}: no such file or folder")


def check_sampling_args(model: PaletteModel, steps: int | None, sampler: str | None, schedule: str | None,
                        num_samples: int, flag: str = "--", eta: float | None = None,
                        guidance: float = 0.0) -> tuple[int, str]:
    """Validate the sampling arguments (``flag`` prefixes their names in messages); returns (steps, schedule)."""
    if num_samples < 1:
        name = "--num-samples" if flag else "num_samples"
        raise PaletteError(f"{name} must be at least 1, got {num_samples}")
    d = model.config.diffusion
    steps = d.sample_steps if steps is None else steps
    schedule = schedule or d.sample_schedule
    if schedule not in SCHEDULES:
        raise PaletteError(f"{flag}schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if sampler is not None and sampler not in SAMPLERS:
        raise PaletteError(f"{flag}sampler {sampler!r} is unknown: choose one of {', '.join(SAMPLERS)}")
    try:
        check_sampler(sampler or d.sampler, resolve_eta(sampler or d.sampler, eta, d.eta))
    except ValueError as err:
        raise PaletteError(f"{flag}eta: {err}") from None
    try:
        check_guidance(model.config, guidance, f"{flag}guidance")
    except ValueError as err:
        raise PaletteError(str(err)) from None
    limit = (d.inference_schedule if schedule == "inference" else d.train_schedule).steps
    if not 1 <= steps <= limit:
        raise PaletteError(f"{flag}steps must be between 1 and {limit} (the {schedule} schedule's length), got {steps}")
    try:
        check_student(model.config, steps, sampler or d.sampler, resolve_eta(sampler or d.sampler, eta, d.eta),
                      schedule, flag)
    except ValueError as err:
        raise PaletteError(str(err)) from None
    return steps, schedule


def tile_overlap_of(model: PaletteModel, tile: bool, overlap: int | None, flag: str = "--") -> int | None:
    """The tile overlap in pixels (None: no tiling) of the ``tile`` and ``overlap`` arguments."""
    if not tile:
        if overlap is not None:
            raise PaletteError(f"{flag}overlap is the overlap of tiles: it needs {flag}tile" + ("=True" if not flag else ""))
        return None
    size = model.config.model.image_size
    overlap = size // 4 if overlap is None else overlap
    if not 0 <= overlap < size:
        raise PaletteError(f"{flag}overlap must be between 0 and {size - 1} (below the model's size), got {overlap}")
    return overlap


MAX_SEED = 2**32 - 1


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` if it is a whole number from 0 to :data:`MAX_SEED`, else a PaletteError naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise PaletteError(f"{name} must be a whole number from 0 to {MAX_SEED} (2**32 - 1), got {seed!r}")
    return int(seed)


def output_stems(inputs: Sequence[Path]) -> list[str]:
    """The stem of each input's output files: the file's own, or with its extension (a_png, a_jpg) where inputs share
    a stem (compared without case, as some file systems do); a PaletteError where names would still collide."""
    counts = Counter(path.stem.casefold() for path in inputs)
    stems = [path.stem if counts[path.stem.casefold()] == 1 else f"{path.stem}_{path.suffix.lstrip('.')}"
             for path in inputs]
    owners: dict[str, Path] = {}
    for path, stem in zip(inputs, stems):
        other = owners.setdefault(stem.casefold(), path)
        if other != path:
            raise PaletteError(f"--input: {other} and {path} would both write {stem}_0.png: rename one of them")
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
    num_samples: int,
    steps: int,
    seed: int = 0,
    sampler: str | None = None,
    eta: float | None = None,
    schedule: str | None = None,
    batch_size: int = 16,
    on_step: Callable[[], None] | None = None,
    save_process: int = 0,
    batch_invariant: bool = False,
    seeds: Sequence[int] | None = None,
    keys: Sequence[int | str] | None = None,
    guidance: float = 0.0,
) -> list[list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """Sample every condition ``num_samples`` times, ``batch_size`` images per network call.

    Sample k of condition i is seeded by :func:`sample_seed` (``seed``, ``keys[i]``, k), the keys defaulting to the
    conditions' positions, or by ``seeds[i] + k`` when ``seeds`` is given (the panorama numbers its windows itself).
    Returns, per condition and sample, the sample at the input's size in [-1, 1] and, with ``save_process`` = P > 0,
    a strip of the y0 estimates at P evenly spaced steps (the last is the final sample). ``guidance`` is the
    classifier-free guidance weight w of :meth:`PaletteModel.sample`.
    """
    if seeds is not None:
        seed_of = lambda i, k: seeds[i] + k  # noqa: E731
    else:
        keys = range(len(conditions)) if keys is None else list(keys)
        seed_of = lambda i, k: sample_seed(seed, keys[i], k)  # noqa: E731
    device = next(model.parameters()).device
    results: list[list] = [[None] * num_samples for _ in conditions]
    keep_at = set(np.linspace(1, steps, save_process).round().astype(int).tolist()) if save_process else set()
    for chunk in _batches(conditions, num_samples, batch_size):
        first = chunk[0][0]
        x = torch.stack([c.x for c, _, _ in chunk]).to(device)
        masked = first.masked
        m = torch.stack([c.mask for c, _, _ in chunk]).to(device) if masked else None
        known = torch.stack([resize(c.original, tuple(c.x.shape[1:])) for c, _, _ in chunk]).to(device) if masked else None
        snapshots: list[torch.Tensor] = []

        def callback(i, n, y, y0_hat):
            if on_step is not None:
                on_step()
            if i in keep_at:
                snapshots.append(y0_hat.detach().cpu() if i < n else y.detach().cpu())

        out = model.sample(x, m, known, steps=steps, seeds=[seed_of(i, k) for _, i, k in chunk], callback=callback,
                           sampler=sampler, eta=eta, schedule=schedule, batch_invariant=batch_invariant,
                           tile_overlap=first.tile_overlap, guidance=guidance)
        for j, ((cond, i, k), y) in enumerate(zip(chunk, out)):
            strip = torch.cat([snap[j] for snap in snapshots], dim=2) if snapshots else None
            results[i][k] = (at_input_size(cond, y), strip)
    return results


def _batches(conditions: Sequence[Condition], num_samples: int, batch_size: int) -> list[list]:
    """The (condition, index, sample number) jobs in batches of at most ``batch_size`` whose inputs have one shape
    (tiled images differ in size)."""
    batches: list[list] = []
    for i, c in enumerate(conditions):
        for k in range(num_samples):
            if batches and len(batches[-1]) < max(1, batch_size) and batches[-1][0][0].x.shape == c.x.shape:
                batches[-1].append((c, i, k))
            else:
                batches.append([(c, i, k)])
    return batches


def network_calls(conditions: Sequence[Condition], num_samples: int, batch_size: int, steps: int) -> int:
    """How many times :func:`sample_conditions` calls ``on_step``: batches x steps."""
    return len(_batches(conditions, num_samples, batch_size)) * steps


def sample_files(
    model: PaletteModel,
    task: str,
    inputs: Sequence[Path],
    out_dir: Path,
    num_samples: int = 1,
    steps: int | None = None,
    seed: int = 0,
    mask: Path | str | None = None,
    side: str = "right",
    batch_size: int = 16,
    progress: bool = True,
    sampler: str | None = None,
    eta: float | None = None,
    schedule: str | None = None,
    save_process: int = 0,
    batch_invariant: bool = False,
    tile_overlap: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    stems: Sequence[str] | None = None,
    guidance: float = 0.0,
) -> list[Path]:
    """Write ``<stem>_<k>.png`` for k < num_samples and ``<stem>_input.png`` for each input; returns the samples.

    ``stems`` default to :func:`output_stems` of ``inputs``. Every input is read (a file above ``max_pixels`` pixels
    is refused from its header) before anything is written.

    They are 16-bit PNG files when the input file or the model's training targets have 16-bit samples. With
    ``tile_overlap`` each image is sampled at its own size in overlapping tiles of the model's size. ``guidance`` is
    the classifier-free guidance weight (0: none).

    With ``save_process`` = P > 0, also ``<stem>_<k>_process.png``: a strip of the y0 estimates at P evenly spaced
    steps, the last being the final sample (the paper's figures of the denoising process).
    """
    from tqdm.auto import tqdm

    check_task(model, task)
    steps, schedule = check_sampling_args(model, steps, sampler, schedule, num_samples, eta=eta, guidance=guidance)
    check_seed(seed, "--seed")
    stems = output_stems(inputs) if stems is None else list(stems)
    out_dir = Path(out_dir)
    channels = model.config.model.condition_channels
    conditions, bits = [], []
    for path in inputs:
        try:
            image = load_image(path, channels, max_pixels)
            depth = max(probe(path, max_pixels).bits, model.config.data.target_bits)
        except (OSError, ValueError) as err:
            raise PaletteError(f"--input {path}: cannot be read as an image ({err})") from None
        rng = np.random.default_rng([seed, input_key(path.name)])  # the file's own generated mask and degradation
        conditions.append(make_condition(model, task, image, rng, resolve_mask(mask, image), side, tile_overlap))
        bits.append(depth)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stem, cond, depth in zip(stems, conditions, bits):
        save_image(input_as_seen(cond), out_dir / f"{stem}_input.png", depth)
    total = network_calls(conditions, num_samples, batch_size, steps)
    with tqdm(total=total, desc=f"sample {task}", unit="step", disable=not progress) as bar:
        results = sample_conditions(model, conditions, num_samples, steps, seed, sampler, eta, schedule, batch_size,
                                    on_step=lambda: bar.update(1), save_process=save_process,
                                    batch_invariant=batch_invariant, keys=[path.name for path in inputs],
                                    guidance=guidance)
    written = []
    for stem, depth, samples in zip(stems, bits, results):
        for k, (sample, strip) in enumerate(samples):
            target = out_dir / f"{stem}_{k}.png"
            save_image(sample, target, depth)
            written.append(target)
            if strip is not None:
                save_image(strip, out_dir / f"{stem}_{k}_process.png")
    return written


def input_as_seen(condition: Condition) -> torch.Tensor:
    """The model input as a person should see it, at the input's size (holes grey)."""
    if condition.masked:
        return condition.original * (1 - condition.full_mask)
    return resize(condition.x, tuple(condition.original.shape[1:]))


def resolve_mask(mask: str | Path | None, image: torch.Tensor) -> np.ndarray | str | None:
    """``--mask``: a mask image file of the image's size, or the name of a generated mask."""
    if mask is None:
        return None
    if Path(mask).is_file():
        return read_mask(Path(mask), tuple(image.shape[1:]))
    name = str(mask)
    if name in masks.MASK_NAMES or name.startswith("freeform-"):
        return name
    raise PaletteError(f"--mask {mask}: no such file, and not a mask name ({', '.join(masks.MASK_NAMES)})")
