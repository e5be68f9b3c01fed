"""``palette eval``: generate a model's outputs for an evaluation set and compute the paper's metrics.

Two phases, both in ``OUT``:

1. Generation writes ``samples/<id>_<k>.png`` (k < K) and ``inputs/<id>.png`` for every image, each file written
   atomically. An image whose K samples exist is skipped, so an interrupted run continues where it stopped, and
   ``--shard i/n`` generates the pending images whose index is i modulo n (several processes or jobs can share the work).
   Sample k of image i is seeded by (seed, i, k) and its mask by (fixed mask seed, i), never by the shard.
2. One pass over the images computes every metric, each backbone run once per image (:mod:`palette.eval_metrics`).
   ``metrics.json`` holds every figure and why a requested one is absent, ``table.md`` a row laid out like the paper's
   tables, ``sheet.png`` examples.

Images are evaluated at the model's size: the centred largest square, resized (bicubic, antialiased).

This module is generation and the orchestration of a run (options, the manifest check, the result files); the metric
pass is :mod:`palette.eval_metrics`, and the files both phases read or write (evaluation images, samples, manifest,
reference statistics) are :mod:`palette.eval_files`, so that measuring needs nothing of generation. The Markdown
table (``palette eval-table``) stays here beside :func:`read_results`: it lays out the ``metrics.json`` files this
module writes. The names callers use are importable from here as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import metrics as image_metrics
from . import protocols
from .data import load_image
from .errors import ArgumentError, PaletteError
from .eval_files import check_manifest, pending, prepare, read_sample, sample_paths, weights_digest
from .eval_metrics import METRICS, compute_metrics
from .imagefile import DEFAULT_MAX_PIXELS
from .conditions import Condition
from .sampling import check_task, sample_conditions
from .sampling_options import SamplingOptions, check_seed
from .sheets import compose_sheet, to_pil
from .tasks import Sample, jpeg_compress, make_task

log = logging.getLogger(__name__)

DEFAULT_MASK = {"inpainting": "freeform-20-30", "uncropping": "uncrop-right"}


@dataclass
class EvalOptions:
    task: str
    num_samples: int = 1
    steps: int | None = None
    sampler: str | None = None
    eta: float | None = None
    schedule: str | None = None
    guidance: float = 0.0  # classifier-free guidance weight w (0: none)
    seed: int = 0
    batch_size: int = 16
    batch_invariant: bool = False  # bit-identical samples whatever the batch (resumed or sharded runs), slower
    mask: str | None = None  # a mask name (inpainting, uncropping)
    mask_file: Path | None = None  # the paper's bit-packed mask archive, with mask_category
    mask_category: str | None = None
    quality: int = 10  # JPEG quality factor of the inputs (the paper: 5, 10, 20)
    metrics: tuple[str, ...] = METRICS
    weights_dir: Path | None = None
    reference: Path | None = None  # a folder or list of reference images for FID/KID
    reference_stats: Path | None = None  # cached reference statistics (read if present, else written)
    diversity: str = "paper"  # which sample pairs diversity averages over: a key of metrics.DIVERSITY_PAIRS
    limit: int | None = None
    name: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS  # evaluation images claiming more pixels are refused before decoding
    extra: dict = field(default_factory=dict)

    def sampling(self) -> SamplingOptions:
        """How the samples are drawn, as every other sampling path is told."""
        return SamplingOptions(steps=self.steps, sampler=self.sampler, schedule=self.schedule, eta=self.eta,
                               guidance=self.guidance, seed=self.seed, num_samples=self.num_samples,
                               batch_size=self.batch_size, batch_invariant=self.batch_invariant)



class MaskSource:
    """The evaluation mask of image ``index``: from the paper's mask file, or generated with a fixed seed."""

    def __init__(self, options: EvalOptions, size: int, count: int):
        self.name = options.mask or DEFAULT_MASK.get(options.task)
        self.size = size
        self.masks = None
        if options.mask_file is not None:
            if not options.mask_category:
                raise ArgumentError("mask_category", "is needed with a mask file: its category, e.g. freeform-20-30 or "
                                    "'20-30% freeform'")
            self.masks = protocols.load_mask_file(options.mask_file, options.mask_category)
            if len(self.masks) < count:
                raise ArgumentError("mask_file", f"{options.mask_file} holds {len(self.masks)} masks for "
                                                 f"{count} images")
            self.name = f"file:{options.mask_category}"

    def __call__(self, index: int) -> np.ndarray:
        if self.masks is None:
            try:
                return protocols.eval_mask(self.name, index, self.size)
            except ValueError as err:
                raise ArgumentError("mask", f"{self.name}: {err}") from None
        mask = self.masks[index]
        if mask.shape != (self.size, self.size):  # nearest, so a hole stays a hole
            mask = np.asarray(Image.fromarray(mask).resize((self.size, self.size), Image.NEAREST), dtype=bool)
        return mask


def eval_condition(task: str, original: torch.Tensor, index: int, options: EvalOptions,
                   masks: MaskSource | None) -> Condition:
    """The model input of evaluation image ``index`` (``original`` in [0, 1] at the model's size).

    Masks and random degradation parameters are seeded by (fixed seed, index): the same in every run and shard."""
    y = original * 2 - 1
    t = make_task(task)
    rng = np.random.default_rng([protocols.EVAL_MASK_SEED, index])
    if t.masked:
        x, m = t.condition(y, rng, mask=masks(index))
        return Condition.of_example(Sample(x, y, m), masked=True)
    if task == "jpeg":
        x = jpeg_compress(y, options.quality).to(y.dtype)
        return Condition.of_example(Sample(x, y, torch.ones_like(y[:1])), masked=False)
    # colorization, super-resolution, deblurring, denoising: the training degradation with this image's fixed
    # random parameters (blur kernel, noise sigma)
    return Condition.of_example(t(y, rng), masked=False)


def _save_atomic(image: torch.Tensor, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    to_pil(image).save(tmp, format="PNG")
    os.replace(tmp, path)



def generate(model, eval_set: protocols.EvalSet, options: EvalOptions, out_dir: Path, shard: tuple[int, int] = (0, 1),
             progress: bool = True, processes=None) -> int:
    """Sample every pending image of this shard; returns how many images were sampled.

    ``shard`` (i, n) takes the images whose index is i modulo n (separate jobs, any time). Launched processes
    (``processes`` with several ranks) instead split the pending list evenly, agreed on before anyone writes, so
    their shares differ by one image at most and no process waits on another for more than one batch.
    """
    from tqdm.auto import tqdm

    check_task(model, options.task)
    sampling = options.sampling().resolved(model.config)
    size, channels = model.config.model.image_size, model.config.model.channels
    make_task(options.task).check_channels(channels)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    (out_dir / "inputs").mkdir(parents=True, exist_ok=True)
    items = eval_set.items
    if processes is not None and processes.world > 1:  # listed by the main process before anyone writes
        todo = processes.from_main(pending(items, out_dir, options.num_samples) if processes.main else None)
        todo = todo[processes.rank :: processes.world]
    else:
        rank, world = shard  # split by index: the same split whenever a job starts
        todo = [i for i in pending(items, out_dir, options.num_samples) if i % world == rank]
    masks = MaskSource(options, size, len(items)) if make_task(options.task).masked else None
    per_call = max(1, options.batch_size // options.num_samples)
    with tqdm(total=len(todo), desc=f"eval: sample {options.task}", unit="image", disable=not progress) as bar:
        for start in range(0, len(todo), per_call):
            chunk = todo[start : start + per_call]
            conditions = [eval_condition(options.task, prepare(items[i].path, size, channels, options.max_pixels), i,
                                         options, masks)
                          for i in chunk]
            results = sample_conditions(model, conditions, sampling, keys=chunk)
            for i, cond, samples in zip(chunk, conditions, results):
                _save_atomic(cond.as_seen(), out_dir / "inputs" / f"{items[i].id}.png")
                for k, (sample, _) in enumerate(samples):  # the samples last: their presence marks the image done
                    _save_atomic(sample, sample_paths(out_dir, items[i], k))
            bar.update(len(chunk))
    return len(todo)


def write_sheet(eval_set: protocols.EvalSet, out_dir: Path, num_samples: int, size: int, channels: int,
                rows: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS) -> Path:
    """input | samples (up to 4) | original, for the first ``rows`` images."""
    shown = min(num_samples, 4)
    grid = []
    for item in eval_set.items[:rows]:
        grid.append([load_image(out_dir / "inputs" / f"{item.id}.png", channels) * 2 - 1,
                     *(read_sample(sample_paths(out_dir, item, k), size, channels) * 2 - 1 for k in range(shown)),
                     prepare(item.path, size, channels, max_pixels) * 2 - 1])
    sheet = compose_sheet(grid, ["input", *(f"sample {k + 1}" for k in range(shown)), "original"],
                          scale=max(1, 128 // size))
    path = out_dir / "sheet.png"
    sheet.save(path)
    return path


def evaluate(model, eval_set: protocols.EvalSet, options: EvalOptions, out_dir: str | Path, shard: tuple[int, int] = (0, 1),
             device: str | torch.device = "cpu", progress: bool = True, checkpoint: str = "",
             processes=None, weights_file: Path | None = None) -> dict | None:
    """Generate (this shard's pending images), then, unless sharded, compute and write the metrics and table.

    With launched ``processes``, all of them generate and run the metric backbones on their shares, and the main one
    computes the figures (the others return None). ``samples/manifest.json`` records what makes the samples (the
    digest of ``weights_file``, else of the network's tensors, the sampler, steps, seed, ...): a run that would
    make them otherwise refuses to add to them."""
    out_dir = Path(out_dir)
    if options.limit is not None:
        eval_set = dataclasses.replace(eval_set, items=eval_set.items[: options.limit])
    _check_options(options)
    size, channels = model.config.model.image_size, model.config.model.channels
    made_by = _made_by(model, eval_set, options, weights_file)
    launched = processes is not None and processes.world > 1
    _check_samples_made_alike(out_dir, made_by, processes if launched else None)
    start = time.perf_counter()
    sampled = generate(model, eval_set, options, out_dir, shard, progress, processes)
    generation_seconds = time.perf_counter() - start
    if launched:
        processes.barrier()  # every sample is written before anyone reads them
    if shard[1] > 1:
        log.info("shard %d/%d: sampled %d images into %s", shard[0], shard[1], sampled, out_dir)
        return None
    measured = compute_metrics(eval_set, options, out_dir, size, channels, device, progress, processes)
    if measured is None:  # a process other than the main one: its share is with the main one
        return None
    result = _result(eval_set, options, made_by, checkpoint, measured, generation_seconds, sampled)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out_dir / "table.md").write_text(markdown_table([result]))
    write_sheet(eval_set, out_dir, options.num_samples, size, channels, max_pixels=options.max_pixels)
    return result


def _check_options(options: EvalOptions) -> None:
    """Refuse unknown metrics, an unknown diversity and a bad seed before anything runs."""
    unknown = set(options.metrics) - set(METRICS)
    if unknown:
        raise ArgumentError("metrics", f": unknown {', '.join(sorted(unknown))}; choose among {', '.join(METRICS)}")
    if options.diversity not in image_metrics.DIVERSITY_PAIRS:
        raise ArgumentError("diversity", f"{options.diversity!r} is unknown: choose one of "
                                         f"{', '.join(image_metrics.DIVERSITY_PAIRS)}")
    check_seed(options.seed)


def _made_by(model, eval_set: protocols.EvalSet, options: EvalOptions, weights_file: Path | None) -> dict:
    """What makes the samples, as ``samples/manifest.json`` records it: weights, task, condition, sampler, seed."""
    sampling = options.sampling().resolved(model.config)
    condition = _condition_record(options, model.config.model.image_size)
    return {"weights_sha256": weights_digest(model, weights_file), "task": options.task, "protocol": eval_set.name,
            "condition": condition, "sampler": sampling.sampler, "steps": sampling.steps,
            "schedule": sampling.schedule, "eta": sampling.eta, "guidance": sampling.guidance, "seed": sampling.seed}


def _condition_record(options: EvalOptions, size: int) -> dict:
    """How the task's inputs are made, where that can vary: the mask (inpainting, uncropping) or the JPEG quality."""
    if options.task == "inpainting":
        return {"mask": MaskSource(options, size, 0).name if options.mask_file is None
                else f"{options.mask_file}:{options.mask_category}"}
    if options.task == "uncropping":
        return {"mask": options.mask or DEFAULT_MASK["uncropping"]}
    if options.task == "jpeg":
        return {"quality": options.quality}
    return {}


def _check_samples_made_alike(out_dir: Path, made_by: dict, launched) -> None:
    """Refuse to add to samples made otherwise (see :func:`check_manifest`); launched processes all stop, or none."""
    problem = check_manifest(out_dir, made_by) if launched is None or launched.main else None
    if launched is not None:  # every process stops, or none
        problem = launched.from_main(problem)
    if problem:
        raise ArgumentError("out_dir", f"{out_dir}: {problem}. Use another folder, or delete {out_dir / 'samples'} "
                                       "to start over")


def _result(eval_set: protocols.EvalSet, options: EvalOptions, made_by: dict, checkpoint: str, measured: dict,
            generation_seconds: float, sampled: int) -> dict:
    """The content of ``metrics.json``: what was evaluated and how, the metric pass's figures, and this run's work."""
    sampler, steps = made_by["sampler"], made_by["steps"]
    guided = f", guidance {options.guidance:g}" if options.guidance else ""
    name = options.name or f"{Path(checkpoint).name or 'model'} ({sampler}, {steps} steps{guided})"
    return {
        "name": name, "task": options.task, "protocol": eval_set.name, "num_images": len(eval_set.items),
        "num_samples": options.num_samples, "checkpoint": str(checkpoint),
        "weights_sha256": made_by["weights_sha256"], "sampler": sampler, "steps": steps,
        "guidance": options.guidance, "seed": options.seed, "condition": made_by["condition"], **measured,
        "generation_seconds_this_run": round(generation_seconds, 2), "images_sampled_this_run": sampled,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
    }


COLUMNS = (  # key, header, format
    ("fid", "FID ↓", "{:.2f}"), ("is", "IS ↑", "{:.1f}"), ("ca", "CA ↑", "{:.1f}%"), ("pd", "PD ↓", "{:.1f}"),
    ("kid", "KID ↓", "{:.4f}"), ("lpips_diversity", "LPIPS div. ↑", "{:.3f}"),
    ("ms-ssim_diversity", "MS-SSIM div. ↓", "{:.3f}"), ("psnr", "PSNR ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.3f}"),
)


def markdown_table(results: list[dict]) -> str:
    """The paper's table layout: a row per evaluated model; FID / IS / CA / PD first, then what else was measured."""
    present = [c for c in COLUMNS if any(c[0] in r["metrics"] for r in results)]
    lines = ["| Model | " + " | ".join(h for _, h, _ in present) + " |",
             "|---|" + "---|" * len(present)]
    for r in results:
        cells = [f.format(r["metrics"][k]) if k in r["metrics"] else "–" for k, _, f in present]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_results(paths: list[str | Path]) -> list[dict]:
    """metrics.json files (or the eval folders holding them), for :func:`markdown_table`."""
    results = []
    for p in map(Path, paths):
        file = p / "metrics.json" if p.is_dir() else p
        try:
            results.append(json.loads(file.read_text()))
        except (OSError, ValueError) as err:
            raise PaletteError(f"{file}: not a palette eval result ({err})") from None
    return results
