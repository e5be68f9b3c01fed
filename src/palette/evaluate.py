"""``palette eval``: generate a model's outputs for an evaluation set and compute the paper's metrics.

Two phases, both in ``OUT``:

1. Generation writes ``samples/<id>_<k>.png`` (k < K) and ``inputs/<id>.png`` for every image, each file written
   atomically. An image whose K samples exist is skipped, so an interrupted run continues where it stopped, and
   ``--shard i/n`` generates the pending images whose index is i modulo n (several processes or jobs can share the work).
   Sample k of image i is seeded by (seed, i, k) and its mask by (fixed mask seed, i), never by the shard.
2. One pass over the images computes every metric, each backbone run once per image: Inception-v3 on the first
   sample (FID, KID, IS) and, when the reference is the evaluated set itself, on the original; ResNet-50 on the
   first sample (CA, when the labels are ImageNet-1k's); GoogLeNet on the first sample and the original (PD); LPIPS
   and MS-SSIM between pairs of the K samples (diversity: the paper's pairs, or all pairs); PSNR and SSIM of every
   sample against the original. A separate FID reference (a protocol's, or ``--reference``) is a second pass whose
   statistics are cached (:func:`reference_cache_path`). ``metrics.json`` holds every figure and why a requested
   one is absent, ``table.md`` a row laid out like the paper's tables, ``sheet.png`` examples.

Images are evaluated at the model's size: the centred largest square, resized (bicubic, antialiased).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import metrics as MT
from . import protocols as P
from .data import load_image
from .distributed import gather_interleaved
from .errors import PaletteError
from .imagefile import DEFAULT_MAX_PIXELS, probe
from .sampling import Condition, check_sampling_args, check_seed, check_task, sample_conditions
from .sheets import center_square, compose_sheet, to_pil
from .tasks import jpeg_compress, make_task

log = logging.getLogger(__name__)

METRICS = ("fid", "kid", "is", "ca", "pd", "lpips", "ms-ssim", "psnr", "ssim")
# which backbone weights each metric needs
METRIC_WEIGHTS = {"fid": "inception-v3-compat", "kid": "inception-v3-compat", "is": "inception-v3-compat",
                  "ca": "resnet50", "pd": "googlenet", "lpips": "alexnet"}
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


def prepare(path: Path, size: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """An evaluation image: the centred largest square at ``size``, (C, size, size) in [0, 1]."""
    try:
        image = load_image(path, channels, max_pixels)
    except (OSError, ValueError) as err:
        raise PaletteError(f"{path}: cannot be read as an image ({err})") from None
    return center_square(image, size).clamp(0, 1)


class MaskSource:
    """The evaluation mask of image ``index``: from the paper's mask file, or generated with a fixed seed."""

    def __init__(self, options: EvalOptions, size: int, count: int):
        self.name = options.mask or DEFAULT_MASK.get(options.task)
        self.size = size
        self.masks = None
        if options.mask_file is not None:
            if not options.mask_category:
                raise PaletteError("--mask-file needs --mask-category (e.g. freeform-20-30 or '20-30% freeform')")
            self.masks = P.load_mask_file(options.mask_file, options.mask_category)
            if len(self.masks) < count:
                raise PaletteError(f"--mask-file {options.mask_file} holds {len(self.masks)} masks for "
                                   f"{count} images")
            self.name = f"file:{options.mask_category}"

    def __call__(self, index: int) -> np.ndarray:
        if self.masks is None:
            try:
                return P.eval_mask(self.name, index, self.size)
            except ValueError as err:
                raise PaletteError(f"--mask {self.name}: {err}") from None
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
    rng = np.random.default_rng([P.EVAL_MASK_SEED, index])
    if t.masked:
        x, m = t.condition(y, rng, mask=masks(index))
        return Condition(y, x, m, m, True)
    if task == "jpeg":
        x = jpeg_compress(y, options.quality).to(y.dtype)
        return Condition(y, x, torch.ones_like(y[:1]), None, False)
    # colorization, super-resolution, deblurring, denoising: the training degradation with this image's fixed
    # random parameters (blur kernel, noise sigma)
    example = t(y, rng)
    return Condition(y, example.x, example.mask, None, False)


def _save_atomic(image: torch.Tensor, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    to_pil(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def sample_paths(out_dir: Path, item: P.EvalItem, k: int) -> Path:
    return out_dir / "samples" / f"{item.id}_{k}.png"


def read_sample(path: Path, size: int, channels: int) -> torch.Tensor:
    """A generated sample, (C, size, size) in [0, 1]: an image file of the model's size, checked from its header."""
    try:
        info = probe(path, max_pixels=None)
        if (info.width, info.height) != (size, size):
            raise PaletteError(f"{path} is {info.width}x{info.height}, not {size}x{size}: not a sample of this model; "
                               "delete it, and palette eval generates it again")
        return load_image(path, channels, max_pixels=size * size)
    except (OSError, ValueError) as err:
        raise PaletteError(f"{path}: not a readable sample ({str(err) or type(err).__name__}); delete it, and "
                           "palette eval generates it again") from None


MANIFEST = "manifest.json"  # in samples/: what made the samples


def weights_digest(model, weights_file: Path | None = None) -> str:
    """SHA-256 of the weights file (streamed), or, without one, of the network's tensors (names, dtypes, bytes)."""
    digest = hashlib.sha256()
    if weights_file is not None:
        with open(weights_file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    for name, tensor in sorted(model.net.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "tensors:" + digest.hexdigest()


def check_manifest(out_dir: Path, made_by: dict) -> str | None:
    """Write ``samples/manifest.json`` (what makes the samples) or compare it with the one there; returns why the
    samples there cannot be mixed with this run's, or None. A samples folder without a manifest must be empty.
    Shard jobs started together race to write it: the first one's stands, and the others compare with it."""
    folder = out_dir / "samples"
    path = folder / MANIFEST
    if not path.is_file():
        if folder.is_dir() and any(folder.glob("*.png")):
            return f"{folder} holds samples without {MANIFEST} saying which checkpoint, sampler, steps and seed made them"
        folder.mkdir(parents=True, exist_ok=True)
        if _create_exclusively(path, json.dumps(made_by, indent=2) + "\n"):
            return None
    try:
        previous = json.loads(path.read_text())
    except ValueError as err:
        return f"{path} is damaged ({err})"
    previous.setdefault("guidance", 0.0)  # manifests written before guidance existed were unguided
    differ = [f"{key} {previous.get(key)!r} there, {value!r} now" for key, value in made_by.items()
              if previous.get(key) != value]
    return f"{folder} holds samples made otherwise: {'; '.join(differ)}" if differ else None


def _create_exclusively(path: Path, text: str) -> bool:
    """Write ``path`` whole, unless it exists (then False): a private temporary file, hard-linked to its name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def pending(items: list[P.EvalItem], out_dir: Path, num_samples: int) -> list[int]:
    return [i for i, item in enumerate(items)
            if not all(sample_paths(out_dir, item, k).is_file() for k in range(num_samples))]


def generate(model, eval_set: P.EvalSet, options: EvalOptions, out_dir: Path, shard: tuple[int, int] = (0, 1),
             progress: bool = True, processes=None) -> int:
    """Sample every pending image of this shard; returns how many images were sampled.

    ``shard`` (i, n) takes the images whose index is i modulo n (separate jobs, any time). Launched processes
    (``processes`` with several ranks) instead split the pending list evenly, agreed on before anyone writes, so
    their shares differ by one image at most and no process waits on another for more than one batch.
    """
    from tqdm.auto import tqdm

    check_task(model, options.task)
    steps, schedule = check_sampling_args(model, options.steps, options.sampler, options.schedule,
                                          options.num_samples, eta=options.eta, guidance=options.guidance)
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
            results = sample_conditions(model, conditions, options.num_samples, steps, options.seed, options.sampler,
                                        options.eta, schedule, options.batch_size,
                                        batch_invariant=options.batch_invariant, keys=chunk,
                                        guidance=options.guidance)
            for i, cond, samples in zip(chunk, conditions, results):
                visible = cond.x * (1 - cond.mask) if cond.masked else cond.x
                _save_atomic(visible, out_dir / "inputs" / f"{items[i].id}.png")
                for k, (sample, _) in enumerate(samples):  # the samples last: their presence marks the image done
                    _save_atomic(sample, sample_paths(out_dir, items[i], k))
            bar.update(len(chunk))
    return len(todo)


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


def _save_stats(path: Path, stats: MT.FeatureStats, meta: dict) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"mu": stats.mu, "sigma": stats.sigma}
    if stats.features is not None:
        tensors["features"] = stats.features
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in {**meta, "n": stats.n}.items()})
    os.replace(tmp, path)


def load_stats(path: Path) -> tuple[MT.FeatureStats, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
        return MT.FeatureStats(t["mu"], t["sigma"], int(meta["n"]), t.get("features")), meta
    except Exception as err:
        raise PaletteError(f"--reference-stats {path}: not a palette statistics file ({str(err)[:200]})") from None


KEEP_REFERENCE_FEATURES = 10_000  # raw features kept in a statistics file (KID draws subsets of 1,000 from them)


def reference_cache_dir() -> Path:
    """Where reference statistics are cached: ``$PALETTE_CACHE_DIR/reference-stats`` or ~/.cache/palette/..."""
    root = os.environ.get("PALETTE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "palette") / "reference-stats"


def reference_cache_path(name: str, paths: list[Path], size: int, channels: int, inception_sha256: str) -> Path:
    """The cache file of a reference set's statistics, keyed by what they depend on: the files (names and byte sizes,
    so a moved copy of the data set still hits), the image size and channels, and the Inception weights."""
    key = hashlib.sha256(f"{size} {channels} {inception_sha256}\n".encode())
    for path in paths:
        key.update(f"{path.name} {path.stat().st_size}\n".encode())
    return reference_cache_dir() / f"{name}-{size}px-{channels}ch-{key.hexdigest()[:16]}.safetensors"


def reference_stats(backbones: MT.Backbones, paths: list[Path], size: int, channels: int, batch_size: int,
                    timer: _Timer, progress: bool, max_pixels: int = DEFAULT_MAX_PIXELS) -> MT.FeatureStats:
    from tqdm.auto import tqdm

    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise PaletteError(f"the FID reference: {len(missing)} of {len(paths)} images are missing (e.g. {missing[0]}); "
                           "--data must hold the whole validation set, or give --reference / --reference-stats")
    feats = []
    for start in tqdm(range(0, len(paths), batch_size), desc="eval: reference features", unit="batch",
                      disable=not progress):
        batch = torch.stack([prepare(p, size, channels, max_pixels) for p in paths[start : start + batch_size]])
        feats.append(timer.run("inception", len(batch), backbones.inception, batch)[0])
    return MT.FeatureStats.of(torch.cat(feats).numpy(), keep=KEEP_REFERENCE_FEATURES)


def compute_metrics(eval_set: P.EvalSet, options: EvalOptions, out_dir: Path, size: int, channels: int,
                    device: str | torch.device = "cpu", progress: bool = True, processes=None) -> dict | None:
    """Every metric of ``options.metrics`` in one pass over the generated images (see the module docstring).

    With launched ``processes`` each one runs the backbones on every N-th batch, the main process gathers the
    per-batch results in their order and computes the figures (the others return None); the figures are those of one
    process. The ``seconds_per_1000`` timings are then the main process's share."""
    from tqdm.auto import tqdm

    rank, world = (processes.rank, processes.world) if processes is not None and processes.world > 1 else (0, 1)

    items, k_count = eval_set.items, options.num_samples
    missing = pending(items, out_dir, k_count) if rank == 0 else None
    if world > 1:  # every process raises the same error, or none
        missing = processes.from_main(missing)
    if missing:
        raise PaletteError(f"{len(missing)} of {len(items)} images have fewer than {k_count} samples in "
                           f"{out_dir / 'samples'} (e.g. {items[missing[0]].id}); run palette eval without --shard "
                           "(or every shard) to generate them first")
    wanted = [m for m in options.metrics if m in METRICS]
    absent = {}  # requested metrics that cannot be computed here, and why
    if "ca" in wanted and (reason := P.classification_unavailable(eval_set)):
        absent["ca"] = reason
    if k_count < 2:
        absent.update({m: "diversity needs --num-samples 2 or more" for m in ("lpips", "ms-ssim") if m in wanted})
    for metric, reason in absent.items():
        log.info("%s not computed: %s", metric, reason)
    wanted = [m for m in wanted if m not in absent]
    diversity_pairs = {m: pairs(k_count) for m, pairs in MT.DIVERSITY_PAIRS[options.diversity].items()}
    backbones = MT.Backbones(options.weights_dir, device)
    backbones.require(sorted({METRIC_WEIGHTS[m] for m in wanted if m in METRIC_WEIGHTS}))
    inception_metrics = {"fid", "kid", "is"} & set(wanted)
    timer = _Timer()

    stats_ref, ref_meta, stats_file = None, {}, options.reference_stats
    fid_like = {"fid", "kid"} & set(wanted)
    if fid_like and stats_file is not None and Path(stats_file).is_file():
        stats_ref, ref_meta = load_stats(Path(stats_file))
    own_reference = fid_like and stats_ref is None and options.reference is None and eval_set.reference is None

    batch = max(1, options.batch_size)
    starts = range(0, len(items), batch)
    per_batch: list[dict[str, list]] = []  # this process's batches: starts[rank], starts[rank + world], ...
    for start in tqdm(starts[rank::world], desc="eval: metrics", unit="batch", disable=not progress):
        acc = defaultdict(list)
        per_batch.append(acc)
        chunk = items[start : start + batch]
        originals = torch.stack([prepare(i.path, size, channels, options.max_pixels) for i in chunk])
        samples = torch.stack([torch.stack([read_sample(sample_paths(out_dir, i, k), size, channels)
                                            for k in range(k_count)]) for i in chunk])  # (B, K, C, S, S)
        first = samples[:, 0]
        if inception_metrics:
            pool, logits = timer.run("inception", len(chunk), backbones.inception, first)
            acc["pool"].append(pool)
            acc["logits"].append(logits)
            if own_reference:
                acc["ref_pool"].append(timer.run("inception", len(chunk), backbones.inception, originals)[0])
        if "ca" in wanted:
            logits = timer.run("resnet50", len(chunk), backbones.classify, first)
            acc["correct"].append((logits.argmax(1) == torch.tensor([i.label for i in chunk])).float())
        if "pd" in wanted:
            f_out = timer.run("googlenet", len(chunk), backbones.googlenet_features, first)
            f_orig = timer.run("googlenet", len(chunk), backbones.googlenet_features, originals)
            acc["pd"].append((f_out - f_orig).norm(dim=1))
        if "lpips" in wanted:
            acc["lpips"] += [timer.run("lpips", 1, MT.mean_over_pairs, s, backbones.lpips, diversity_pairs["lpips"])
                             for s in samples]
        if "ms-ssim" in wanted:
            acc["ms-ssim"] += [timer.run("ms-ssim", 1, MT.mean_over_pairs, s, MT.ms_ssim, diversity_pairs["ms-ssim"])
                               for s in samples]
        flat, truth = samples.flatten(0, 1), originals.repeat_interleave(k_count, 0)
        if "psnr" in wanted:
            acc["psnr"].append(timer.run("psnr", len(flat), MT.psnr, flat, truth))
        if "ssim" in wanted:
            acc["ssim"].append(timer.run("ssim", len(flat), MT.ssim, flat, truth))

    if world > 1:  # every process's batches to the main one, in the order of a single pass
        per_batch = gather_interleaved([dict(a) for a in per_batch], len(starts), main_only=True)
        if rank != 0:
            return None
    acc = defaultdict(list)
    for batch_figures in per_batch:  # the order of a single pass: IS's splits and KID's subsets depend on it
        for key, values in batch_figures.items():
            acc[key] += values

    figures: dict[str, float] = {}
    reference = {}
    if fid_like:
        statistics_read = stats_ref is not None
        if stats_ref is None:
            inception_sha256 = backbones.digests.get("inception-v3-compat", "")
            if own_reference:
                stats_ref = MT.FeatureStats.of(torch.cat(acc["ref_pool"]).numpy(), keep=KEEP_REFERENCE_FEATURES)
                source = f"{eval_set.name} originals (the evaluated images themselves)"
                stats_file = Path(stats_file or out_dir / "reference_stats.safetensors")
            else:
                if options.reference:
                    ref_items, source, name = (P.folder_or_list(options.reference).items, str(options.reference),
                                               Path(options.reference).stem)
                else:
                    ref_items, source, name = eval_set.reference, eval_set.reference_name, eval_set.name
                paths = [i.path for i in ref_items]
                stats_file = Path(stats_file) if stats_file else None
                if stats_file is None and all(p.is_file() for p in paths):
                    stats_file = reference_cache_path(name, paths, size, channels, inception_sha256)
                    if stats_file.is_file():
                        stats_ref, _ = load_stats(stats_file)
                        statistics_read = True
                        log.info("FID reference statistics read from the cache %s", stats_file)
                if stats_ref is None:
                    stats_ref = reference_stats(backbones, paths, size, channels, batch, timer, progress,
                                                options.max_pixels)
            ref_meta = {"source": source, "image_size": size, "inception_sha256": inception_sha256}
            if not statistics_read:
                _save_stats(stats_file, stats_ref, ref_meta)
        elif (int(ref_meta.get("image_size", size)) != size or ref_meta.get("inception_sha256")
              != backbones.digests.get("inception-v3-compat")):
            raise PaletteError(f"--reference-stats {stats_file} was computed at {ref_meta.get('image_size')} px with "
                               f"Inception weights {str(ref_meta.get('inception_sha256'))[:8]}...: not comparable "
                               "with this evaluation; delete it or give another file")
        reference = {"source": ref_meta.get("source"), "n": stats_ref.n, "statistics": str(stats_file),
                     "statistics_read_from_file": statistics_read}
    if inception_metrics:
        pool = torch.cat(acc["pool"]).numpy()
        if "fid" in wanted:
            figures["fid"] = timer.run("fid", 1, MT.frechet_distance, MT.FeatureStats.of(pool), stats_ref)
        if "kid" in wanted:
            if stats_ref.features is None or len(stats_ref.features) < 2:
                raise PaletteError("the reference statistics hold no raw features, which KID needs")
            figures["kid"], figures["kid_std"] = MT.kernel_inception_distance(pool, stats_ref.features)
        if "is" in wanted:
            figures["is"], figures["is_std"] = MT.inception_score(torch.cat(acc["logits"]))
    if "ca" in wanted:
        figures["ca"] = float(torch.cat(acc["correct"]).mean()) * 100
    if "pd" in wanted:
        figures["pd"] = float(torch.cat(acc["pd"]).mean())
    for name in ("lpips", "ms-ssim"):
        if name in wanted:
            figures[f"{name}_diversity"] = float(np.mean(acc[name]))
    for name in ("psnr", "ssim"):
        if name in wanted:
            figures[name] = float(torch.cat(acc[name]).mean())
    pairs_used = MT.DIVERSITY_PAIRS[options.diversity]
    diversity = {"pairs": options.diversity, **{m: MT.DIVERSITY_DESCRIPTIONS[pairs_used[m]]
                                                for m in ("lpips", "ms-ssim") if m in wanted}}
    return {"metrics": figures, "absent_metrics": absent, "reference": reference,
            "diversity": diversity if len(diversity) > 1 else None, "weights": dict(backbones.digests),
            "seconds_per_1000_images": timer.per_1000(),
            "ms_ssim_scales": MT.ms_ssim_scales(size) if "ms-ssim" in wanted else None}


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


def write_sheet(eval_set: P.EvalSet, out_dir: Path, num_samples: int, size: int, channels: int,
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


def evaluate(model, eval_set: P.EvalSet, options: EvalOptions, out_dir: str | Path, shard: tuple[int, int] = (0, 1),
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
    unknown = set(options.metrics) - set(METRICS)
    if unknown:
        raise PaletteError(f"--metrics: unknown {', '.join(sorted(unknown))}; choose among {', '.join(METRICS)}")
    if options.diversity not in MT.DIVERSITY_PAIRS:
        raise PaletteError(f"--diversity {options.diversity!r} is unknown: choose one of "
                           f"{', '.join(MT.DIVERSITY_PAIRS)}")
    check_seed(options.seed)
    size, channels = model.config.model.image_size, model.config.model.channels
    d = model.config.diffusion
    steps, schedule = check_sampling_args(model, options.steps, options.sampler, options.schedule,
                                          options.num_samples, eta=options.eta, guidance=options.guidance)
    sampler = options.sampler or d.sampler
    condition = {"inpainting": {"mask": MaskSource(options, size, 0).name if options.mask_file is None
                                else f"{options.mask_file}:{options.mask_category}"},
                 "uncropping": {"mask": options.mask or DEFAULT_MASK["uncropping"]},
                 "jpeg": {"quality": options.quality}}.get(options.task, {})
    made_by = {"weights_sha256": weights_digest(model, weights_file), "task": options.task, "protocol": eval_set.name,
               "condition": condition, "sampler": sampler, "steps": steps, "schedule": schedule,
               "eta": d.eta if options.eta is None else options.eta, "guidance": options.guidance,
               "seed": options.seed}
    launched = processes is not None and processes.world > 1
    problem = check_manifest(out_dir, made_by) if not launched or processes.main else None
    if launched:  # every process stops, or none
        problem = processes.from_main(problem)
    if problem:
        raise PaletteError(f"--out {out_dir}: {problem}. Use another --out, or delete {out_dir / 'samples'} to start "
                           "over")
    start = time.perf_counter()
    sampled = generate(model, eval_set, options, out_dir, shard, progress, processes)
    generation_seconds = time.perf_counter() - start
    if processes is not None and processes.world > 1:
        processes.barrier()  # every sample is written before anyone reads them
    if shard[1] > 1:
        log.info("shard %d/%d: sampled %d images into %s", shard[0], shard[1], sampled, out_dir)
        return None
    result = compute_metrics(eval_set, options, out_dir, size, channels, device, progress, processes)
    if result is None:  # a process other than the main one: its share is with the main one
        return None
    guided = f", guidance {options.guidance:g}" if options.guidance else ""
    name = options.name or f"{Path(checkpoint).name or 'model'} ({sampler}, {steps} steps{guided})"
    result = {
        "name": name, "task": options.task, "protocol": eval_set.name, "num_images": len(eval_set.items),
        "num_samples": options.num_samples, "checkpoint": str(checkpoint),
        "weights_sha256": made_by["weights_sha256"], "sampler": sampler, "steps": steps,
        "guidance": options.guidance, "seed": options.seed, "condition": condition, **result,
        "generation_seconds_this_run": round(generation_seconds, 2), "images_sampled_this_run": sampled,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out_dir / "table.md").write_text(markdown_table([result]))
    write_sheet(eval_set, out_dir, options.num_samples, size, channels, max_pixels=options.max_pixels)
    return result


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
