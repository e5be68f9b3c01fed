"""Checkpoints: safetensors only (loading never unpickles), written atomically.

A run folder holds ``checkpoints/step-NNNNNNNNN/`` with ``model.safetensors``, ``ema.safetensors`` (the weights, the
resolved config as JSON in their metadata) and ``state.safetensors`` (optimizer moments as tensors, the rest of the
training state as JSON metadata). A checkpoint folder is first written under a temporary name and renamed when
complete, then ``checkpoints/latest`` is replaced atomically: killing the process at any moment leaves the last
good checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import Config
from .errors import PaletteError

FORMAT = "palette-1"
WEIGHT_FILES = ("ema.safetensors", "model.safetensors")


def _fsync_dir(path: Path) -> None:
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
    _fsync_dir(path.parent)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], config: Config, **metadata: Any) -> None:
    """Weights as safetensors with the config (JSON) and ``metadata`` in the header; atomic."""
    meta = {"format": FORMAT, "config": config.to_json(), **{k: str(v) for k, v in metadata.items()}}
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(_contiguous(state_dict), tmp, metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    return tensors, metadata


def config_of(metadata: dict[str, str], path: Path) -> Config:
    if "config" not in metadata:
        raise PaletteError(f"checkpoint {path} has no palette config in its metadata: was it written by palette?")
    return Config.from_dict(json.loads(metadata["config"]))


# ---- the optimizer and training state, without pickle ------------------------------------------------------------


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            key = f"optimizer.{index}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value
            else:
                scalars[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        if not key.startswith("optimizer."):
            continue
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    return {"state": dict(sorted(state.items())), "param_groups": meta["param_groups"]}


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


def write_checkpoint(
    run_dir: Path,
    step: int,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    config: Config,
    training: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write a complete checkpoint folder atomically and point ``latest`` at it; keep the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*"):  # left by a process killed while writing; one writer per run folder
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
    try:
        save_weights(tmp / "model.safetensors", model, config, step=step, weights="model")
        save_weights(tmp / "ema.safetensors", ema, config, step=step, weights="ema")
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        save_file(
            _contiguous(opt_tensors) or {"_empty": torch.zeros(0)},
            str(tmp / "state.safetensors"),
            metadata={"format": FORMAT, "optimizer": json.dumps(opt_meta), "training": json.dumps(training)},
        )
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    atomic_write_bytes(root / "latest", final.name.encode())
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if all((candidate / f).is_file() for f in (*WEIGHT_FILES, "state.safetensors")):
            return candidate
    complete = [
        p for p in sorted(root.glob("step-*"))
        if p.is_dir() and all((p / f).is_file() for f in (*WEIGHT_FILES, "state.safetensors"))
    ]
    return complete[-1] if complete else None


def read_training_state(checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(optimizer state dict, training state) of a checkpoint folder."""
    tensors, meta = read_weights(Path(checkpoint) / "state.safetensors")
    optimizer = _unflatten_optimizer(tensors, json.loads(meta["optimizer"]))
    return optimizer, json.loads(meta["training"])


def resolve_weights(path: str | Path, use_ema: bool = True) -> Path:
    """A weights file from a run folder (its latest checkpoint), a checkpoint folder or a ``.safetensors`` file."""
    path = Path(path)
    name = WEIGHT_FILES[0] if use_ema else WEIGHT_FILES[1]
    if path.is_file():
        return path
    if path.is_dir():
        if (path / name).is_file():
            return path / name
        found = latest_checkpoint(path)
        if found is not None:
            return found / name
        raise PaletteError(f"--checkpoint {path}: the folder holds no complete checkpoint (checkpoints/step-*/{name})")
    raise PaletteError(f"--checkpoint {path}: no such file or folder")
