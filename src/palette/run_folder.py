"""A training run's folder: its checkpoints, written atomically, kept to the newest few, and its lock.

A run folder holds ``checkpoints/step-NNNNNNNNN/`` with ``model.safetensors``, ``ema.safetensors`` (the weights, the
resolved config as JSON in their metadata: :mod:`palette.checkpoint`) and ``state.safetensors`` (optimizer moments as
tensors, the rest of the training state as JSON metadata). A checkpoint of an FSDP run is *sharded*: ``shards/`` holds
one safetensors file per process with its shards of the weights, the EMA and the optimizer moments (torch's
distributed checkpoint, see :mod:`palette.sharding`) in place of ``model.safetensors`` and the moments;
``ema.safetensors`` is still the whole EMA a sampler loads.

A checkpoint folder is first written under a temporary name, every file in it fsynced, and renamed when complete, then
``checkpoints/latest`` is replaced atomically: killing the process (or the machine) at any moment leaves the last good
checkpoint loadable. ``latest`` names a folder of ``checkpoints/`` and nothing else. A sharded checkpoint that lacks
one of its processes' files is refused: its lost pieces would silently be left at their initial values.

One process writes a run folder: it holds ``RUN/lock`` (an operating-system lock that ends with the process, however
it ends) while it trains, and a second ``palette train`` on the same folder is refused with the holder's name.
"""

from __future__ import annotations

import contextlib
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
from safetensors import SafetensorError

from .checkpoint import (
    FORMAT, atomic_write_bytes, config_of, fsync_dir, read_header, read_weights, save_weights, write_safetensors,
)
from .config import Config
from .errors import ArgumentError, PaletteError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("ema.safetensors", "model.safetensors")
STATE_FILE = "state.safetensors"
SHARDS = "shards"  # a sharded checkpoint's folder of per-process files
STEP_DIR = re.compile(r"step-\d{9}")
LOCK_FILE = "lock"


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


# ---- writing a checkpoint ------------------------------------------------------------------------------------------


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
    with checkpoint_errors(run_dir, step):
        tmp = new_checkpoint_folder(run_dir, step)
        try:
            save_weights(tmp / "model.safetensors", model, config, step=step, weights="model")
            save_weights(tmp / "ema.safetensors", ema, config, step=step, weights="ema")
            write_training_state(tmp, optimizer, training)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return complete_checkpoint(run_dir, tmp, step, keep)


@contextlib.contextmanager
def checkpoint_errors(run_dir: Path, step: int):
    """A failed write of checkpoint ``step`` (a full disk) as a PaletteError that says what is left."""
    try:
        yield
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as a SafetensorError
        previous = latest_checkpoint(run_dir)
        final = Path(run_dir) / "checkpoints" / step_dir_name(step)
        raise PaletteError(
            f"cannot write checkpoint {final} ({getattr(err, 'strerror', None) or err}); "
            + (f"the previous checkpoint {previous.name} is intact" if previous else "no checkpoint was written")
        ) from None


def new_checkpoint_folder(run_dir: Path, step: int) -> Path:
    """The temporary folder checkpoint ``step`` is written into (then :func:`complete_checkpoint`)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*"):  # left by a process killed while writing; one writer per run folder
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root, prefix=f".{step_dir_name(step)}."))


def complete_checkpoint(run_dir: Path, tmp: Path, step: int, keep: int) -> Path:
    """Rename the written folder ``tmp`` to checkpoint ``step``, point ``latest`` at it, keep the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    final = root / step_dir_name(step)
    try:
        if is_sharded(tmp):
            fsync_dir(tmp / SHARDS)  # its entries, written by every process, must outlive a crash after the rename
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    atomic_write_bytes(root / "latest", final.name.encode())
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_training_state(folder: Path, optimizer: dict[str, Any], training: dict[str, Any]) -> None:
    """``state.safetensors``: the optimizer's tensors (none for a sharded checkpoint: they are in its shards), its
    other values and the training state as JSON metadata; fsynced like the weights before the folder is renamed."""
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    write_safetensors(folder / STATE_FILE, opt_tensors or {"_empty": torch.zeros(0)},
                      {"format": FORMAT, "optimizer": json.dumps(opt_meta), "training": json.dumps(training)})


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict as (its tensors by name, everything else as JSON-able values): no pickle."""
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


# ---- reading checkpoints -------------------------------------------------------------------------------------------


def _complete(folder: Path, root: Path) -> bool:
    """Whether ``folder`` is a complete checkpoint of the run whose checkpoints are in ``root`` (a step folder in it,
    not a link out of it; sharded, with the files of all the processes that wrote it)."""
    return (STEP_DIR.fullmatch(folder.name) is not None and folder.is_dir()
            and folder.resolve().parent == root.resolve()
            and all((folder / f).is_file() for f in (WEIGHT_FILES[0], STATE_FILE))
            and ((folder / WEIGHT_FILES[1]).is_file() or (is_sharded(folder) and _has_all_shards(folder))))


def is_sharded(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` is sharded (an FSDP run's: ``shards/`` instead of ``model.safetensors``)."""
    return (Path(checkpoint) / SHARDS).is_dir()


def check_shards(checkpoint: Path) -> None:
    """Refuse a sharded checkpoint that lacks the file of one of the processes that wrote it (as many as its training
    state records): DCP reads whatever files it finds and would leave the lost pieces at their initial values."""
    from .sharding import missing_shards  # sharding reads its files with this package's checks: imported late

    processes = int(training_state(checkpoint).get("processes", 0))
    missing = missing_shards(Path(checkpoint) / SHARDS, processes)
    if missing:
        raise PaletteError(
            f"checkpoint {checkpoint} is incomplete: {', '.join(f'{SHARDS}/{m}' for m in missing)} missing (it was "
            f"written by {processes} processes, one file each; a multi-node run needs a run folder shared by all "
            "nodes): put the file(s) back, or delete the folder to use an earlier checkpoint")


def _has_all_shards(checkpoint: Path) -> bool:
    try:
        check_shards(checkpoint)
    except PaletteError:
        return False
    return True


def checkpoint_config(checkpoint: Path) -> Config:
    """The config a checkpoint folder was trained with (read from the EMA file's header, not its tensors)."""
    path = Path(checkpoint) / WEIGHT_FILES[0]
    return config_of(read_header(path), path)


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
        if is_sharded(root / name) and (root / name / STATE_FILE).is_file():
            # the run's last checkpoint lost a shard: say so, rather than resume (or sample) an earlier one unawares
            check_shards(root / name)
    complete = [p for p in sorted(root.glob("step-*")) if _complete(p, root)]
    return complete[-1] if complete else None


def read_training_state(checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(optimizer state dict, training state) of a checkpoint folder."""
    tensors, meta = read_weights(Path(checkpoint) / STATE_FILE)
    optimizer = _unflatten_optimizer(tensors, json.loads(meta["optimizer"]))
    return optimizer, json.loads(meta["training"])


def training_state(checkpoint: Path) -> dict[str, Any]:
    """The training state of a checkpoint folder (step, processes, ...), from its state file's header only."""
    return json.loads(read_header(Path(checkpoint) / STATE_FILE).get("training", "{}"))


def export_weights(source: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Write the weights of a checkpoint (``source``: a run folder, its latest; or a checkpoint folder) as one
    safetensors file ``out`` that ``palette sample`` and :func:`palette.sampling.load_model` load: the EMA weights,
    or the trained ones when not ``use_ema``, which a sharded checkpoint holds only in its per-process shards."""
    out = Path(out)
    if out.is_dir() or out.suffix != ".safetensors":
        raise ArgumentError("out", f"{out}: give a file name ending in .safetensors")
    checkpoint = _checkpoint_folder(Path(source))
    header = read_header(checkpoint / WEIGHT_FILES[0])  # the config and the step, whichever weights are exported
    config = config_of(header, checkpoint / WEIGHT_FILES[0])
    weights = "ema" if use_ema else "model"
    if is_sharded(checkpoint) and not use_ema:
        from .sharding import whole_from_shards

        check_shards(checkpoint)
        tensors = whole_from_shards(checkpoint / SHARDS, weights)
    else:
        tensors = read_weights(checkpoint / WEIGHT_FILES[0 if use_ema else 1])[0]
    try:
        save_weights(out, tensors, config, step=header["step"], weights=weights)
    except (OSError, SafetensorError) as err:
        raise ArgumentError("out", f"{out}: cannot write it ({getattr(err, 'strerror', None) or err})") from None
    return out


def _checkpoint_folder(path: Path) -> Path:
    """The checkpoint folder ``path`` names: itself, or a run folder's latest."""
    if (path / STATE_FILE).is_file():
        return path
    found = latest_checkpoint(path) if path.is_dir() else None
    if found is None:
        raise PaletteError(f"{path}: not a checkpoint folder nor a run folder with a complete checkpoint")
    return found


# ---- the run folder: one writer at a time ------------------------------------------------------------------------


def check_output_path(path: str | Path, argument: str = "out") -> Path:
    """``path``, which is to be a folder: an error naming ``argument`` when it is an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArgumentError(argument, f"{path} is a file, not a folder: choose a folder")
    return path


def make_output_folder(path: str | Path, argument: str = "out") -> Path:
    """``path`` as an existing folder (created if needed); an error naming ``argument`` when it is a file or cannot
    be created (a read-only file system, no permission)."""
    path = check_output_path(path, argument)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ArgumentError(argument, f"{path}: cannot create the folder ({err.strerror or err})") from None
    return path


class RunLock:
    """This process's hold on a run folder: ``RUN/lock``, locked with ``flock`` and naming its holder (host, pid).

    The operating system releases the lock when the holding process ends, however it ends, so a crashed run never
    leaves a lock that blocks the next one; a second process that asks for it is refused with the holder's name. The
    holding process may take it again (the command line, then the trainer): it is released with the last
    :meth:`release`. A file system without locks (some network mounts) gets a warning and no lock."""

    _held: dict[str, list] = {}  # resolved run folder -> [file descriptor or None, holds]

    def __init__(self, run_dir: str | Path):
        self.run_dir = make_output_folder(run_dir, "run_dir")
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
            raise ArgumentError("run_dir", f"{self.run_dir}: cannot write in the run folder ({err.strerror or err})") \
                from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "a process that has not named itself yet"
            os.close(fd)
            raise ArgumentError("run_dir", f"{self.run_dir} is in use by another palette train ({holder}; {path}): one "
                                "run writes a folder at a time; wait for it to end or choose another folder") from None
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
