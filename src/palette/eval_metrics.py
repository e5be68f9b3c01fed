"""The metric pass of ``palette eval``: every metric of the paper computed in one pass over the generated samples.

Each backbone runs once per image: Inception-v3 on the first sample (FID, KID, IS) and, when the reference is the
evaluated set itself, on the original; ResNet-50 on the first sample (CA, when the labels are ImageNet-1k's);
GoogLeNet on the first sample and the original (PD); LPIPS and MS-SSIM between pairs of the K samples (diversity:
the paper's pairs, or all pairs); PSNR and SSIM of every sample against the original. A separate FID reference (a
protocol's, or ``--reference``) is a second pass whose statistics are cached
(:func:`palette.eval_files.reference_cache_path`).

Kept apart from generation (:mod:`palette.evaluate`) because it is a different idea with its own state: it reads
finished samples and never samples, and its steps (which metrics are possible, measuring a batch, merging the
processes' batches, the reference statistics, the figures) share the backbones, the timer and the reference, none of
which generation needs. :func:`compute_metrics` reads as the list of those steps.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import metrics as image_metrics
from . import protocols
from .distributed import gather_interleaved
from .errors import ArgumentError, PaletteError
from .eval_files import (load_stats, pending, prepare, read_sample, reference_cache_path, sample_paths,
                         save_stats)
from .imagefile import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from .evaluate import EvalOptions

log = logging.getLogger(__name__)

METRICS = ("fid", "kid", "is", "ca", "pd", "lpips", "ms-ssim", "psnr", "ssim")
# which backbone weights each metric needs
METRIC_WEIGHTS = {"fid": "inception-v3-compat", "kid": "inception-v3-compat", "is": "inception-v3-compat",
                  "ca": "resnet50", "pd": "googlenet", "lpips": "alexnet"}
KEEP_REFERENCE_FEATURES = 10_000  # raw features kept in a statistics file (KID draws subsets of 1,000 from them)


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.images: dict[str, int] = defaultdict(int)

    def run(self, name: str, count: int, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.seconds[name] += time.perf_counter() - start
        self.images[name] += count
        return out

    def per_1000(self) -> dict[str, float]:
        return {k: round(1000 * v / max(1, self.images[k]), 2) for k, v in self.seconds.items()}


def reference_stats(backbones: image_metrics.Backbones, paths: list[Path], size: int, channels: int, batch_size: int,
                    timer: _Timer, progress: bool, max_pixels: int = DEFAULT_MAX_PIXELS) -> image_metrics.FeatureStats:
    """The Inception statistics of a separate reference set, a pass of its own (every image must be there:
    :func:`_check_reference_complete`)."""
    from tqdm.auto import tqdm

    feats = []
    for start in tqdm(range(0, len(paths), batch_size), desc="eval: reference features", unit="batch",
                      disable=not progress):
        batch = torch.stack([prepare(p, size, channels, max_pixels) for p in paths[start : start + batch_size]])
        feats.append(timer.run("inception", len(batch), backbones.inception, batch)[0])
    return image_metrics.FeatureStats.of(torch.cat(feats).numpy(), keep=KEEP_REFERENCE_FEATURES)


@dataclass
class _Pass:
    """What every step of one metric pass reads: the evaluation, the metrics it computes, the backbones, the timer."""

    eval_set: protocols.EvalSet
    options: EvalOptions
    out_dir: Path
    size: int
    channels: int
    progress: bool
    wanted: list[str]  # the requested metrics that can be computed here
    diversity_pairs: dict[str, list[tuple[int, int]]]  # the sample pairs LPIPS and MS-SSIM diversity average over
    backbones: image_metrics.Backbones
    timer: _Timer = field(default_factory=_Timer)
    own_reference: bool = False  # the FID reference is the evaluated originals, measured in this pass

    @property
    def fid_like(self) -> bool:
        return bool({"fid", "kid"} & set(self.wanted))

    @property
    def inception_metrics(self) -> bool:
        return bool({"fid", "kid", "is"} & set(self.wanted))

    @property
    def batch_size(self) -> int:
        return max(1, self.options.batch_size)

    @property
    def batch_count(self) -> int:  # of the whole pass, every process's batches together
        return len(range(0, len(self.eval_set.items), self.batch_size))


def compute_metrics(eval_set: protocols.EvalSet, options: EvalOptions, out_dir: Path, size: int, channels: int,
                    device: str | torch.device = "cpu", progress: bool = True, processes=None) -> dict | None:
    """Every metric of ``options.metrics`` in one pass over the generated images (see the module docstring).

    With launched ``processes`` each one runs the backbones on every N-th batch, the main process gathers the
    per-batch results in their order and computes the figures (the others return None); the figures are those of one
    process. The ``seconds_per_1000`` timings are then the main process's share."""
    launched = processes if processes is not None and processes.world > 1 else None
    _check_samples_present(eval_set.items, out_dir, options.num_samples, launched)
    wanted, absent = _metrics_possible(eval_set, options)
    diversity_pairs = {m: pairs(options.num_samples)
                       for m, pairs in image_metrics.DIVERSITY_PAIRS[options.diversity].items()}
    backbones = image_metrics.Backbones(options.weights_dir, device)
    backbones.require(sorted({METRIC_WEIGHTS[m] for m in wanted if m in METRIC_WEIGHTS}))
    run = _Pass(eval_set, options, out_dir, size, channels, progress, wanted, diversity_pairs, backbones)
    given, given_meta = _given_statistics(run)
    run.own_reference = (run.fid_like and given is None and options.reference is None
                         and eval_set.reference is None)
    per_batch = [_measure_batch(run, chunk) for chunk in _batches_of_this_process(run, launched)]
    measured = _merge_batches(per_batch, run.batch_count, launched)
    if measured is None:  # a process other than the main one: its share is with the main one
        return None
    reference_statistics, reference = _reference_statistics(run, measured, given, given_meta)
    figures = _figures(run, measured, reference_statistics)
    return _metrics_record(run, figures, absent, reference)


def _check_samples_present(items: list[protocols.EvalItem], out_dir: Path, num_samples: int, launched) -> None:
    """Refuse to measure before every image has its K samples (every launched process raises the same error)."""
    missing = pending(items, out_dir, num_samples) if launched is None or launched.rank == 0 else None
    if launched is not None:  # every process raises the same error, or none
        missing = launched.from_main(missing)
    if missing:
        raise PaletteError(f"{len(missing)} of {len(items)} images have fewer than {num_samples} samples in "
                           f"{out_dir / 'samples'} (e.g. {items[missing[0]].id}): generate them first, unsharded or "
                           "by every shard")


def _metrics_possible(eval_set: protocols.EvalSet, options: EvalOptions) -> tuple[list[str], dict[str, str]]:
    """The requested metrics that can be computed here, and those that cannot with the reason (logged too)."""
    wanted = [m for m in options.metrics if m in METRICS]
    absent = {}
    if "ca" in wanted and (reason := protocols.classification_unavailable(eval_set)):
        absent["ca"] = reason
    if options.num_samples < 2:
        absent.update({m: "diversity needs 2 or more samples per image" for m in ("lpips", "ms-ssim") if m in wanted})
    for metric, reason in absent.items():
        log.info("%s not computed: %s", metric, reason)
    return [m for m in wanted if m not in absent], absent


def _given_statistics(run: _Pass) -> tuple[image_metrics.FeatureStats | None, dict]:
    """The FID reference statistics of an existing ``--reference-stats`` file and its metadata, else (None, {})."""
    stats_file = run.options.reference_stats
    if run.fid_like and stats_file is not None and Path(stats_file).is_file():
        return load_stats(Path(stats_file))
    return None, {}


def _batches_of_this_process(run: _Pass, launched):
    """The batches of evaluation items this process measures: every one, or every N-th of N launched processes."""
    from tqdm.auto import tqdm

    rank, world = (launched.rank, launched.world) if launched is not None else (0, 1)
    items, batch = run.eval_set.items, run.batch_size
    starts = range(0, len(items), batch)
    for start in tqdm(starts[rank::world], desc="eval: metrics", unit="batch", disable=not run.progress):
        yield items[start : start + batch]


def _measure_batch(run: _Pass, chunk: list[protocols.EvalItem]) -> dict[str, list]:
    """One batch's measurements, by name, each a list of per-batch tensors or per-image values to merge later."""
    k_count = run.options.num_samples
    originals = torch.stack([prepare(i.path, run.size, run.channels, run.options.max_pixels) for i in chunk])
    samples = torch.stack([torch.stack([read_sample(sample_paths(run.out_dir, i, k), run.size, run.channels)
                                        for k in range(k_count)]) for i in chunk])  # (B, K, C, S, S)
    measured = defaultdict(list)
    _measure_with_backbones(run, measured, chunk, originals, samples[:, 0])
    _measure_samples(run, measured, originals, samples)
    return measured


def _measure_with_backbones(run: _Pass, measured: dict[str, list], chunk: list[protocols.EvalItem],
                            originals: torch.Tensor, first: torch.Tensor) -> None:
    """Inception (FID, KID, IS), ResNet-50 (CA) and GoogLeNet (PD) on the first sample of each image."""
    timer, backbones, wanted = run.timer, run.backbones, run.wanted
    if run.inception_metrics:
        pool, logits = timer.run("inception", len(chunk), backbones.inception, first)
        measured["pool"].append(pool)
        measured["logits"].append(logits)
        if run.own_reference:
            measured["ref_pool"].append(timer.run("inception", len(chunk), backbones.inception, originals)[0])
    if "ca" in wanted:
        logits = timer.run("resnet50", len(chunk), backbones.classify, first)
        measured["correct"].append((logits.argmax(1) == torch.tensor([i.label for i in chunk])).float())
    if "pd" in wanted:
        f_out = timer.run("googlenet", len(chunk), backbones.googlenet_features, first)
        f_orig = timer.run("googlenet", len(chunk), backbones.googlenet_features, originals)
        measured["pd"].append((f_out - f_orig).norm(dim=1))


def _measure_samples(run: _Pass, measured: dict[str, list], originals: torch.Tensor, samples: torch.Tensor) -> None:
    """Diversity (LPIPS, MS-SSIM) between pairs of an image's samples; PSNR and SSIM of each against the original."""
    timer, wanted, k_count = run.timer, run.wanted, run.options.num_samples
    if "lpips" in wanted:
        measured["lpips"] += [timer.run("lpips", 1, image_metrics.mean_over_pairs, s, run.backbones.lpips,
                                        run.diversity_pairs["lpips"]) for s in samples]
    if "ms-ssim" in wanted:
        measured["ms-ssim"] += [timer.run("ms-ssim", 1, image_metrics.mean_over_pairs, s, image_metrics.ms_ssim,
                                          run.diversity_pairs["ms-ssim"]) for s in samples]
    flat, truth = samples.flatten(0, 1), originals.repeat_interleave(k_count, 0)
    if "psnr" in wanted:
        measured["psnr"].append(timer.run("psnr", len(flat), image_metrics.psnr, flat, truth))
    if "ssim" in wanted:
        measured["ssim"].append(timer.run("ssim", len(flat), image_metrics.ssim, flat, truth))


def _merge_batches(per_batch: list[dict[str, list]], batch_count: int, launched) -> dict[str, list] | None:
    """Every batch's measurements, concatenated in the order of a single pass: IS's splits and KID's subsets depend
    on it. Launched processes send theirs to the main one; the others get None."""
    if launched is not None:  # every process's batches to the main one, in the order of a single pass
        per_batch = gather_interleaved([dict(b) for b in per_batch], batch_count, main_only=True)
        if launched.rank != 0:
            return None
    merged = defaultdict(list)
    for batch_figures in per_batch:
        for key, values in batch_figures.items():
            merged[key] += values
    return merged


def _reference_statistics(run: _Pass, measured: dict[str, list], given: image_metrics.FeatureStats | None,
                          given_meta: dict) -> tuple[image_metrics.FeatureStats | None, dict]:
    """The FID/KID reference statistics and what ``metrics.json`` says of them (None and {} without FID or KID).

    Given (``--reference-stats``): checked against this evaluation. Otherwise the evaluated originals, or a separate
    reference set read from the cache or measured; statistics not read from a file are written to one."""
    if not run.fid_like:
        return None, {}
    if given is not None:
        _check_comparable(run, given_meta)
        statistics, meta, read, stats_file = given, given_meta, True, run.options.reference_stats
    else:
        statistics, meta, read, stats_file = _new_reference_statistics(run, measured)
        if not read:
            save_stats(stats_file, statistics, meta)
    return statistics, {"source": meta.get("source"), "n": statistics.n, "statistics": str(stats_file),
                        "statistics_read_from_file": read}


def _check_comparable(run: _Pass, meta: dict) -> None:
    """Given statistics must come from this image size and these Inception weights."""
    stats_file = run.options.reference_stats
    if (int(meta.get("image_size", run.size)) != run.size or meta.get("inception_sha256")
            != run.backbones.digests.get("inception-v3-compat")):
        raise ArgumentError("reference_stats", f"{stats_file} was computed at {meta.get('image_size')} px with "
                                               f"Inception weights {str(meta.get('inception_sha256'))[:8]}...: not "
                                               "comparable with this evaluation; delete it or give another file")


def _new_reference_statistics(run: _Pass, measured: dict[str, list]
                              ) -> tuple[image_metrics.FeatureStats, dict, bool, Path | None]:
    """(statistics, metadata, read from the cache?, file) of a reference not given as ``--reference-stats``."""
    inception_sha256 = run.backbones.digests.get("inception-v3-compat", "")
    if run.own_reference:
        statistics = image_metrics.FeatureStats.of(torch.cat(measured["ref_pool"]).numpy(),
                                                   keep=KEEP_REFERENCE_FEATURES)
        source = f"{run.eval_set.name} originals (the evaluated images themselves)"
        stats_file = Path(run.options.reference_stats or run.out_dir / "reference_stats.safetensors")
        read = False
    else:
        statistics, source, stats_file, read = _separate_reference_statistics(run, inception_sha256)
    meta = {"source": source, "image_size": run.size, "inception_sha256": inception_sha256}
    return statistics, meta, read, stats_file


def _separate_reference_statistics(run: _Pass, inception_sha256: str
                                   ) -> tuple[image_metrics.FeatureStats, str, Path | None, bool]:
    """(statistics, source, file, read from the cache?) of a protocol's reference set or ``--reference``: from the
    cache when its files are all there and were measured before, else measured (a second pass)."""
    options, eval_set = run.options, run.eval_set
    if options.reference:
        ref_items = _reference_items(options.reference)
        source, name = str(options.reference), Path(options.reference).stem
    else:
        ref_items, source, name = eval_set.reference, eval_set.reference_name, eval_set.name
    paths = [i.path for i in ref_items]
    _check_reference_complete(paths, options)
    stats_file = Path(options.reference_stats) if options.reference_stats else None
    if stats_file is None:
        stats_file = reference_cache_path(name, paths, run.size, run.channels, inception_sha256)
        if stats_file.is_file():
            statistics, _ = load_stats(stats_file)
            log.info("FID reference statistics read from the cache %s", stats_file)
            return statistics, source, stats_file, True
    statistics = reference_stats(run.backbones, paths, run.size, run.channels, run.batch_size, run.timer, run.progress,
                                 options.max_pixels)
    return statistics, source, stats_file, False


def _reference_items(reference: Path) -> list[protocols.EvalItem]:
    """The images of the folder or list given as ``reference``; its errors name that argument."""
    try:
        return protocols.folder_or_list(reference).items
    except ArgumentError as err:
        raise ArgumentError("reference", err.problem) from None


def _check_reference_complete(paths: list[Path], options: EvalOptions) -> None:
    """Refuse a separate FID reference with images missing: FID against part of it is not the reported figure."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        argument, given = ("reference", f"{options.reference}: ") if options.reference else ("data", ": ")
        raise ArgumentError(argument, f"{given}{len(missing)} of {len(paths)} images of the FID reference are missing "
                                      f"(e.g. {missing[0]}); it must hold them all, or give its statistics instead")


def _figures(run: _Pass, measured: dict[str, list], reference: image_metrics.FeatureStats | None) -> dict[str, float]:
    """The figures of ``metrics.json`` from the merged measurements, in the order of the paper's tables."""
    wanted, figures = run.wanted, {}
    if run.inception_metrics:
        pool = torch.cat(measured["pool"]).numpy()
        if "fid" in wanted:
            figures["fid"] = run.timer.run("fid", 1, image_metrics.frechet_distance,
                                           image_metrics.FeatureStats.of(pool), reference)
        if "kid" in wanted:
            if reference.features is None or len(reference.features) < 2:
                raise PaletteError("the reference statistics hold no raw features, which KID needs")
            figures["kid"], figures["kid_std"] = image_metrics.kernel_inception_distance(pool, reference.features)
        if "is" in wanted:
            figures["is"], figures["is_std"] = image_metrics.inception_score(torch.cat(measured["logits"]))
    if "ca" in wanted:
        figures["ca"] = float(torch.cat(measured["correct"]).mean()) * 100
    if "pd" in wanted:
        figures["pd"] = float(torch.cat(measured["pd"]).mean())
    for name in ("lpips", "ms-ssim"):
        if name in wanted:
            figures[f"{name}_diversity"] = float(np.mean(measured[name]))
    for name in ("psnr", "ssim"):
        if name in wanted:
            figures[name] = float(torch.cat(measured[name]).mean())
    return figures


def _metrics_record(run: _Pass, figures: dict[str, float], absent: dict[str, str], reference: dict) -> dict:
    """What :func:`compute_metrics` returns: the figures, why requested ones are absent, and how they were made."""
    wanted, diversity_name = run.wanted, run.options.diversity
    pairs_used = image_metrics.DIVERSITY_PAIRS[diversity_name]
    diversity = {"pairs": diversity_name, **{m: image_metrics.DIVERSITY_DESCRIPTIONS[pairs_used[m]]
                                             for m in ("lpips", "ms-ssim") if m in wanted}}
    return {"metrics": figures, "absent_metrics": absent, "reference": reference,
            "diversity": diversity if len(diversity) > 1 else None, "weights": dict(run.backbones.digests),
            "seconds_per_1000_images": run.timer.per_1000(),
            "ms_ssim_scales": image_metrics.ms_ssim_scales(run.size) if "ms-ssim" in wanted else None}

