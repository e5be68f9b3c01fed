"""Pretrained weights of the metric backbones: where they live, how they are checked, how to get them.

Nothing downloads silently. Each backbone reads one file from the weights folder: ``--weights-dir``, else
``$PALETTE_WEIGHTS_DIR``, else ``~/.cache/palette/weights``; torch hub's cache (``~/.cache/torch/hub/checkpoints``)
is searched too, so weights torchvision already fetched are reused. ``palette weights download`` fetches the standard
files where there is internet. A missing file is an error that names it, its checksum and how to get it.

Files are read with ``torch.load(weights_only=True)`` (a restricted unpickler that only rebuilds tensors and plain
containers) or as safetensors. The standard files' names end with the first 8 hex digits of their SHA-256 (torch hub's
convention); a file whose digest does not match is used, with a warning that its figures are not comparable with
published ones (this is how tests run with randomly initialised backbones).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ArgumentError, PaletteError

log = logging.getLogger(__name__)

ENV_VAR = "PALETTE_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightsFile:
    name: str
    filename: str
    url: str
    sha256_prefix: str
    used_for: str


WEIGHTS = {
    w.name: w
    for w in (
        WeightsFile(
            "inception-v3-compat", "weights-inception-2015-12-05-6726825d.pth",
            "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
            "6726825d", "FID, KID, IS (torch-fidelity's port of the TensorFlow Inception-v3 of the FID paper)",
        ),
        WeightsFile(
            "resnet50", "resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth",
            "0676ba61", "classification accuracy (torchvision ResNet-50, IMAGENET1K_V1, 76.1% top-1)",
        ),
        WeightsFile(
            "googlenet", "googlenet-1378be20.pth", "https://download.pytorch.org/models/googlenet-1378be20.pth",
            "1378be20", "perceptual distance (torchvision Inception-v1 / GoogLeNet, IMAGENET1K_V1)",
        ),
        WeightsFile(
            "alexnet", "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            "7be5be79", "LPIPS diversity (its AlexNet backbone; LPIPS' linear heads ship inside torchmetrics)",
        ),
    )
}


def weights_dir(override: str | Path | None = None) -> Path:
    """The folder palette reads backbone weights from (see the module docstring for the order)."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "palette" / "weights"


def _torch_hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _spec(name: str) -> WeightsFile:
    if name not in WEIGHTS:
        raise PaletteError(f"unknown weights {name!r}: choose among {', '.join(WEIGHTS)}")
    return WEIGHTS[name]


def find(name: str, directory: str | Path | None = None) -> Path | None:
    """The file of backbone ``name`` (``.pth`` or ``.safetensors`` of the same stem), or None."""
    spec = _spec(name)
    stem = Path(spec.filename).stem
    for folder in (weights_dir(directory), _torch_hub_dir()):
        for candidate in (folder / spec.filename, folder / f"{stem}.safetensors"):
            if candidate.is_file():
                return candidate
    return None


def missing_message(name: str, directory: str | Path | None = None) -> str:
    spec = _spec(name)
    folder = weights_dir(directory)
    return (
        f"{folder}: the {name} weights are missing: palette needs {folder / spec.filename} (SHA-256 starting "
        f"{spec.sha256_prefix}) for {spec.used_for}. Get it with `palette weights download {name} --weights-dir "
        f"{folder}` where there is internet, or fetch {spec.url} yourself and put it there (or give the folder that "
        f"holds it; ${ENV_VAR} sets the default)."
    )


def path(name: str, directory: str | Path | None = None) -> Path:
    """The file of backbone ``name``; when missing, an error on the weights folder (the ``weights_dir`` argument)
    naming the file, its checksum and its source."""
    found = find(name, directory)
    if found is None:
        raise ArgumentError("weights_dir", missing_message(name, directory))
    return found


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def is_standard(name: str, digest: str) -> bool:
    return digest.startswith(_spec(name).sha256_prefix)


def load_state_dict(name: str, directory: str | Path | None = None) -> tuple[dict[str, torch.Tensor], Path, str]:
    """(state dict, file, SHA-256) of backbone ``name``, read without unpickling arbitrary objects."""
    file = path(name, directory)
    digest = sha256(file)
    if not is_standard(name, digest):
        log.warning("%s: not the standard %s weights (SHA-256 %s..., expected %s...): figures computed with it are not "
                    "comparable with published ones", file, name, digest[:8], _spec(name).sha256_prefix)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(file)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated download, an HTML page saved as .pth, a pickle with code in it
        raise PaletteError(f"{file}: cannot be read as {name} weights ({str(err)[:200]}); delete it and fetch it "
                           f"again ({_spec(name).url})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PaletteError(f"{file}: not a state dict of tensors")
    return state, file, digest


def download(name: str, directory: str | Path | None = None, progress: bool = True) -> Path:
    """Fetch the standard file of ``name`` into the weights folder, check its digest, move it in place atomically.

    Not ``torch.hub.download_url_to_file``, which does the same with a hash prefix: it opens the URL without a
    timeout (torch 2.14), so a server that stops answering would hang the process for ever."""
    import urllib.request

    from tqdm.auto import tqdm

    spec = _spec(name)
    folder = weights_dir(directory)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / spec.filename
    if target.is_file() and is_standard(name, sha256(target)):
        return target
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{spec.filename}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=spec.filename, disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
        digest = sha256(Path(tmp))
        if not is_standard(name, digest):
            raise PaletteError(f"{spec.url} gave a file whose SHA-256 is {digest[:8]}..., not {spec.sha256_prefix}...")
        os.replace(tmp, target)
    except OSError as err:
        raise PaletteError(f"cannot download {spec.url}: {err}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
