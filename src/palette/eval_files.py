"""The files of ``palette eval``: the evaluation images at the model's size, the samples in ``OUT/samples`` (their
names, reading them back, which images still lack them), the manifest of what made them, and the FID reference
statistics files with their cache.

Both phases of an evaluation use these, generation (:mod:`palette.evaluate`) and the metric pass
(:mod:`palette.eval_metrics`), so they live apart from both: each phase imports them, and the metric pass needs
nothing of generation.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from . import metrics as image_metrics
from . import protocols
from .data import load_image
from .errors import PaletteError
from .imagefile import DEFAULT_MAX_PIXELS, probe
from .samplers import ETA_SAMPLERS
from .sheets import center_square

MANIFEST = "manifest.json"  # in samples/: what made the samples


def prepare(path: Path, size: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """An evaluation image: the centred largest square at ``size``, (C, size, size) in [0, 1]."""
    try:
        image = load_image(path, channels, max_pixels)
    except (OSError, ValueError) as err:
        raise PaletteError(f"{path}: cannot be read as an image ({err})") from None
    return center_square(image, size).clamp(0, 1)


def sample_paths(out_dir: Path, item: protocols.EvalItem, k: int) -> Path:
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


def pending(items: list[protocols.EvalItem], out_dir: Path, num_samples: int) -> list[int]:
    return [i for i, item in enumerate(items)
            if not all(sample_paths(out_dir, item, k).is_file() for k in range(num_samples))]


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
    if previous.get("sampler") not in ETA_SAMPLERS:  # older manifests recorded the config's eta for any sampler,
        previous["eta"] = 0.0  # though only DDIM draws with it
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


def save_stats(path: Path, stats: image_metrics.FeatureStats, meta: dict) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"mu": stats.mu, "sigma": stats.sigma}
    if stats.features is not None:
        tensors["features"] = stats.features
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in {**meta, "n": stats.n}.items()})
    os.replace(tmp, path)


def load_stats(path: Path) -> tuple[image_metrics.FeatureStats, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
        return image_metrics.FeatureStats(t["mu"], t["sigma"], int(meta["n"]), t.get("features")), meta
    except Exception as err:
        # the file given as reference_stats, or a cached one: the path names which
        raise PaletteError(f"{path}: not a palette statistics file ({str(err)[:200]})") from None


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
