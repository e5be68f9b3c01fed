"""Weights files: safetensors only (loading never unpickles), the config in the header, written atomically; and
which weights file a name means.

A weights file holds a network's tensors and, in its header, the resolved config as JSON, the format and the step.
Every file is written under a temporary name in its folder, fsynced and renamed, so a reader finds the old file or
the new one and never half of one. Weights that hold NaN or infinity are refused when read.

:func:`resolve_weights` turns what a user names (a ``.safetensors`` file, a checkpoint folder, a run folder, a
distillation folder, or ``palette:demo``, the model that ships inside the package) into one weights file. The run
folder's own layout (step folders, ``latest``, the training state, the lock) is :mod:`palette.run_folder`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from .config import Config
from .errors import ArgumentError, PaletteError

FORMAT = "palette-1"
ROUND_FOLDER = "steps-{steps:04d}"  # a round of `palette distill` in its folder: the student of that many steps
DEMO_CHECKPOINT = "palette:demo"  # the name of the packaged demo model wherever a checkpoint is accepted


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (files created or renamed in it) outlive a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``tensors`` (copied to the CPU) and ``metadata`` as a safetensors file, written via a temporary file in the
    same folder, fsynced, then renamed over ``path``: its bytes are on disk before any rename that publishes it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], config: Config, **metadata: Any) -> None:
    """Weights as safetensors with the config (JSON) and ``metadata`` in the header; atomic."""
    meta = {"format": FORMAT, "config": config.to_json(), **{k: str(v) for k, v in metadata.items()}}
    write_safetensors(path, state_dict, meta)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise PaletteError(f"checkpoint {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for a file that is not its format
        raise PaletteError(f"checkpoint {path} is not a readable safetensors file ({err})") from None
    check_finite(tensors, path)
    return tensors, metadata


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Weights with a NaN or an infinity sample garbage (all-black images) without any error: refuse them, naming the
    first such tensor."""
    name = first_non_finite(tensors)
    if name is not None:
        raise non_finite_error(path, name)


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor that holds a NaN or an infinity, if any."""
    return next((name for name, tensor in tensors.items()
                 if tensor.is_floating_point() and not torch.isfinite(tensor).all()), None)


def non_finite_error(path: Path, name: str) -> PaletteError:
    return PaletteError(f"checkpoint {path}: tensor {name} holds NaN or infinite values; the weights are damaged "
                        "(use an earlier checkpoint of the run)")


def read_header(path: Path) -> dict[str, str]:
    """The metadata in a safetensors file's header, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:  # safetensors raises several types for a file that is not its format
        raise PaletteError(f"checkpoint {path} is not a readable safetensors file ({err})") from None


def config_of(metadata: dict[str, str], path: Path) -> Config:
    if "config" not in metadata:
        raise PaletteError(f"checkpoint {path} has no palette config in its metadata: was it written by palette?")
    return Config.from_dict(json.loads(metadata["config"]))


# ---- which weights file a name means -------------------------------------------------------------------------------


def demo_weights(argument: str = "checkpoint") -> Path:
    """The packaged demo model's safetensors file (its EMA weights, config and provenance in the header)."""
    from importlib.resources import files

    path = Path(str(files("palette") / "resources" / "demo.safetensors"))
    if not path.is_file():
        raise ArgumentError(argument, f"{DEMO_CHECKPOINT}: this installation has no packaged demo model ({path} is "
                            "missing); reinstall palette, or train one with `palette demo --train`")
    return path


def resolve_weights(path: str | Path, use_ema: bool = True, argument: str = "checkpoint") -> Path:
    """A weights file from a run folder (its latest checkpoint), a checkpoint folder, a ``.safetensors`` file or a
    distillation folder (its finished student with the fewest steps), or ``palette:demo``, the demo model that ships
    inside the package (:data:`DEMO_CHECKPOINT`). ``argument`` names ``path`` in errors."""
    # the run folder's layout is built on this module's files, so it is imported here, where a folder is looked into
    from .run_folder import WEIGHT_FILES, is_sharded, latest_checkpoint

    if str(path) == DEMO_CHECKPOINT:
        if not use_ema:
            raise ArgumentError("use_ema", f": the packaged demo model {DEMO_CHECKPOINT} holds its EMA weights only")
        return demo_weights(argument)
    path = Path(path)
    name = WEIGHT_FILES[0] if use_ema else WEIGHT_FILES[1]
    if path.is_file():
        return path
    if not path.is_dir():
        raise ArgumentError(argument, f"{path}: no such file or folder")
    if (path / name).is_file():
        return path / name
    found = path if is_sharded(path) else latest_checkpoint(path) or _fewest_step_student(path)
    if found is None:
        raise ArgumentError(argument, f"{path}: the folder holds no complete checkpoint (checkpoints/step-*/{name}) "
                            "and no finished distillation round (steps-NNNN)")
    if not (found / name).is_file() and is_sharded(found):
        raise ArgumentError(argument, f"{path}: checkpoint {found.name} is sharded (an FSDP run's): its trained "
                            f"weights are in per-process shards, not in one {name}; make that file with `palette "
                            f"export {path} --no-ema --out FILE.safetensors` (palette.run_folder.export_weights) and "
                            "pass FILE.safetensors")
    return found / name


def _fewest_step_student(folder: Path) -> Path | None:
    """The last checkpoint of the finished round with the fewest steps in a distillation folder, if any: a round
    stopped early (a time limit, a signal) is not a student yet."""
    from .run_folder import latest_checkpoint, training_state

    rounds = sorted(folder.glob(ROUND_FOLDER.replace("{steps:04d}", "[0-9]" * 4)))
    for round_dir in rounds:
        last = latest_checkpoint(round_dir)
        if last is not None and (round_dir / "config.yaml").is_file():
            planned = yaml.safe_load((round_dir / "config.yaml").read_text())["train"]["steps"]
            if int(training_state(last)["step"]) >= planned:
                return last
    return None
