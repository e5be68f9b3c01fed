"""Checkpoints: safetensors only (loading never unpickles), written atomically.

A run folder holds ``checkpoints/step-NNNNNNNNN/`` with ``model.safetensors``, ``ema.safetensors`` (the weights, the
resolved config as JSON in their metadata) and ``state.safetensors`` (optimizer moments as tensors, the rest of the
training state as JSON metadata). A checkpoint folder is first written under a temporary name and renamed when
complete, then ``checkpoints/latest`` is replaced atomically: killing the process at any moment leaves the last
good checkpoint loadable. ``latest`` names a folder of ``checkpoints/`` and nothing else, and weights that hold NaN or
infinity are refused when read.

One process writes a run folder: it holds ``RUN/lock`` (an operating-system lock that ends with the process, however
it ends) while it trains, and a second ``palette train`` on the same folder is refused with the holder's name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import Config
from .errors import PaletteError

log = logging.getLogger(__name__)

FORMAT = "palette-1"
WEIGHT_FILES = ("ema.safetensors", "model.safetensors")
STEP_DIR = re.compile(r"step-\d{9}")
LOCK_FILE = "lock"


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
    check_finite(tensors, path)
    return tensors, metadata


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Weights with a NaN or an infinity sample garbage (all-black images) without any error: refuse them, naming the
    first such tensor."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise PaletteError(f"checkpoint {path}: tensor {name} holds NaN or infinite values; the weights are "
                               "damaged (use an earlier checkpoint of the run)")


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
    """Write a complete checkpoint folder atomically and point ``latest`` at it; keep the newest ``keep``.

    A write that fails (a full disk) leaves the previous checkpoint and ``latest`` as they were and raises a
    PaletteError that says so."""
    root = Path(run_dir) / "checkpoints"
    final = root / step_dir_name(step)
    try:
        _write_checkpoint_folder(root, final, step, model, ema, optimizer, config, training)
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as a SafetensorError
        previous = latest_checkpoint(run_dir)
        raise PaletteError(
            f"cannot write checkpoint {final} ({getattr(err, 'strerror', None) or err}); "
            + (f"the previous checkpoint {previous.name} is intact" if previous else "no checkpoint was written")
        ) from None
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint_folder(root: Path, final: Path, step: int, model: dict[str, torch.Tensor],
                             ema: dict[str, torch.Tensor], optimizer: dict[str, Any], config: Config,
                             training: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*"):  # left by a process killed while writing; one writer per run folder
        shutil.rmtree(stale, ignore_errors=True)
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


def _complete(folder: Path, root: Path) -> bool:
    """Whether ``folder`` is a complete checkpoint of the run whose checkpoints are in ``root`` (a step folder in it,
    not a link out of it)."""
    return (STEP_DIR.fullmatch(folder.name) is not None and folder.is_dir()
            and folder.resolve().parent == root.resolve()
            and all((folder / f).is_file() for f in (*WEIGHT_FILES, "state.safetensors")))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None. ``checkpoints/latest`` must name one of the run's
    own step folders: a pointer out of the run (``../../other-run/...``) is an error, not another run's weights."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        if STEP_DIR.fullmatch(name) is None or (root / name).resolve().parent != root.resolve():
            raise PaletteError(f"{pointer} points to {name[:200]!r}, not to a step-NNNNNNNNN folder of {root}: "
                               "it must stay inside the run; delete it to use the newest complete checkpoint")
        if _complete(root / name, root):
            return root / name
    complete = [p for p in sorted(root.glob("step-*")) if _complete(p, root)]
    return complete[-1] if complete else None


def read_training_state(checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(optimizer state dict, training state) of a checkpoint folder."""
    tensors, meta = read_weights(Path(checkpoint) / "state.safetensors")
    optimizer = _unflatten_optimizer(tensors, json.loads(meta["optimizer"]))
    return optimizer, json.loads(meta["training"])


ROUND_FOLDER = "steps-{steps:04d}"  # a round of `palette distill` in its folder: the student of that many steps


def resolve_weights(path: str | Path, use_ema: bool = True, flag: str = "--checkpoint") -> Path:
    """A weights file from a run folder (its latest checkpoint), a checkpoint folder, a ``.safetensors`` file or a
    distillation folder (its finished student with the fewest steps). ``flag`` names the argument in errors."""
    path = Path(path)
    name = WEIGHT_FILES[0] if use_ema else WEIGHT_FILES[1]
    if path.is_file():
        return path
    if not path.is_dir():
        raise PaletteError(f"{flag} {path}: no such file or folder")
    if (path / name).is_file():
        return path / name
    found = latest_checkpoint(path) or _fewest_step_student(path)
    if found is None:
        raise PaletteError(f"{flag} {path}: the folder holds no complete checkpoint (checkpoints/step-*/{name}) "
                           "and no finished distillation round (steps-NNNN)")
    return found / name


def _fewest_step_student(folder: Path) -> Path | None:
    """The last checkpoint of the finished round with the fewest steps in a distillation folder, if any: a round
    stopped early (a time limit, a signal) is not a student yet."""
    rounds = sorted(folder.glob(ROUND_FOLDER.replace("{steps:04d}", "[0-9]" * 4)))
    for round_dir in rounds:
        last = latest_checkpoint(round_dir)
        if last is not None and (round_dir / "config.yaml").is_file():
            planned = yaml.safe_load((round_dir / "config.yaml").read_text())["train"]["steps"]
            if int(read_training_state(last)[1]["step"]) >= planned:
                return last
    return None


# ---- the run folder: one writer at a time ------------------------------------------------------------------------


def check_output_path(path: str | Path, flag: str = "--out") -> Path:
    """``path``, which is to be a folder: a PaletteError naming ``flag`` when it is an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PaletteError(f"{flag} {path} is a file, not a folder: choose a folder")
    return path


def make_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as an existing folder (created if needed); a PaletteError naming ``flag`` when it is a file or cannot
    be created (a read-only file system, no permission)."""
    path = check_output_path(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PaletteError(f"{flag} {path}: cannot create the folder ({err.strerror or err})") from None
    return path


class RunLock:
    """This process's hold on a run folder: ``RUN/lock``, locked with ``flock`` and naming its holder (host, pid).

    The operating system releases the lock when the holding process ends, however it ends, so a crashed run never
    leaves a lock that blocks the next one; a second process that asks for it is refused with the holder's name. The
    holding process may take it again (the command line, then the trainer): it is released with the last
    :meth:`release`. A file system without locks (some network mounts) gets a warning and no lock."""

    _held: dict[str, list] = {}  # resolved run folder -> [file descriptor or None, holds]

    def __init__(self, run_dir: str | Path):
        self.run_dir = make_output_folder(run_dir)
        self.key = str(self.run_dir.resolve())
        self.released = False
        if self.key in self._held:
            self._held[self.key][1] += 1
        else:
            self._held[self.key] = [self._acquire(), 1]

    def _acquire(self) -> int | None:
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            return None
        path = self.run_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise PaletteError(f"--out {self.run_dir}: cannot write in the run folder ({err.strerror or err})") \
                from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "a process that has not named itself yet"
            os.close(fd)
            raise PaletteError(f"--out {self.run_dir} is in use by another palette train ({holder}; {path}): one run "
                               "writes a folder at a time; wait for it to end or choose another --out folder") from None
        except OSError as err:
            os.close(fd)
            log.warning("cannot lock %s (%s): make sure no other palette train writes into %s", path,
                        err.strerror or err, self.run_dir)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())
        return fd

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        held = self._held[self.key]
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.key]
            if held[0] is not None:
                os.close(held[0])  # closing the descriptor releases the lock

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
