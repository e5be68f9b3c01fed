"""Checkpoints: safetensors only (loading never unpickles), written atomically.

A run folder holds ``checkpoints/step-NNNNNNNNN/`` with ``model.safetensors``, ``ema.safetensors`` (the weights, the
resolved config as JSON in their metadata) and ``state.safetensors`` (optimizer moments as tensors, the rest of the
training state as JSON metadata). A checkpoint of an FSDP run is *sharded*: ``shards/`` holds one safetensors file per
process with its shards of the weights, the EMA and the optimizer moments (torch's distributed checkpoint, see
:mod:`palette.sharding`) in place of ``model.safetensors`` and the moments; ``ema.safetensors`` is still the whole EMA
a sampler loads. A checkpoint folder is first written under a temporary name and renamed when
complete, then ``checkpoints/latest`` is replaced atomically: killing the process at any moment leaves the last
good checkpoint loadable. ``latest`` names a folder of ``checkpoints/`` and nothing else, and weights that hold NaN or
infinity are refused when read (whole files and shards alike). A sharded checkpoint that lacks one of its processes'
files is refused: its lost pieces would silently be left at their initial values.

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
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import Config
from .errors import PaletteError

log = logging.getLogger(__name__)

FORMAT = "palette-1"
WEIGHT_FILES = ("ema.safetensors", "model.safetensors")
STATE_FILE = "state.safetensors"
SHARDS = "shards"  # a sharded checkpoint's folder of per-process files
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
            _fsync_dir(tmp / SHARDS)  # its entries, written by every process, must outlive a crash after the rename
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


def write_training_state(folder: Path, optimizer: dict[str, Any], training: dict[str, Any]) -> None:
    """``state.safetensors``: the optimizer's tensors (none for a sharded checkpoint: they are in its shards), its
    other values and the training state as JSON metadata."""
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    save_file(
        _contiguous(opt_tensors) or {"_empty": torch.zeros(0)},
        str(folder / STATE_FILE),
        metadata={"format": FORMAT, "optimizer": json.dumps(opt_meta), "training": json.dumps(training)},
    )


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
    from .sharding import missing_shards

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
        raise PaletteError(f"--out {out}: give a file name ending in .safetensors")
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
    step = header["step"]
    try:
        save_weights(out, tensors, config, step=step, weights=weights)
    except (OSError, SafetensorError) as err:
        raise PaletteError(f"--out {out}: cannot write it ({getattr(err, 'strerror', None) or err})") from None
    return out


def _checkpoint_folder(path: Path) -> Path:
    """The checkpoint folder ``path`` names: itself, or a run folder's latest."""
    if (path / STATE_FILE).is_file():
        return path
    found = latest_checkpoint(path) if path.is_dir() else None
    if found is None:
        raise PaletteError(f"{path}: not a checkpoint folder nor a run folder with a complete checkpoint")
    return found


ROUND_FOLDER = "steps-{steps:04d}"  # a round of `palette distill` in its folder: the student of that many steps


DEMO_CHECKPOINT = "palette:demo"  # the name of the packaged demo model wherever a checkpoint is accepted


def demo_weights(flag: str = "--checkpoint") -> Path:
    """The packaged demo model's safetensors file (its EMA weights, config and provenance in the header)."""
    from importlib.resources import files

    path = Path(str(files("palette") / "resources" / "demo.safetensors"))
    if not path.is_file():
        raise PaletteError(f"{flag} {DEMO_CHECKPOINT}: this installation has no packaged demo model ({path} is "
                           "missing); reinstall palette, or train one with `palette demo --train`")
    return path


def resolve_weights(path: str | Path, use_ema: bool = True, flag: str = "--checkpoint") -> Path:
    """A weights file from a run folder (its latest checkpoint), a checkpoint folder, a ``.safetensors`` file or a
    distillation folder (its finished student with the fewest steps), or ``palette:demo``, the demo model that ships
    inside the package (:data:`DEMO_CHECKPOINT`). ``flag`` names the argument in errors."""
    if str(path) == DEMO_CHECKPOINT:
        if not use_ema:
            raise PaletteError(f"{flag} {DEMO_CHECKPOINT}: the packaged demo model holds its EMA weights only; "
                               "drop --no-ema")
        return demo_weights(flag)
    path = Path(path)
    name = WEIGHT_FILES[0] if use_ema else WEIGHT_FILES[1]
    if path.is_file():
        return path
    if not path.is_dir():
        raise PaletteError(f"{flag} {path}: no such file or folder")
    if (path / name).is_file():
        return path / name
    found = path if is_sharded(path) else latest_checkpoint(path) or _fewest_step_student(path)
    if found is None:
        raise PaletteError(f"{flag} {path}: the folder holds no complete checkpoint (checkpoints/step-*/{name}) "
                           "and no finished distillation round (steps-NNNN)")
    if not (found / name).is_file() and is_sharded(found):
        raise PaletteError(f"{flag} {path}: checkpoint {found.name} is sharded (an FSDP run's): its trained weights "
                           f"are in per-process shards, not in one {name}; make that file with `palette export {path} "
                           "--no-ema --out FILE.safetensors` and pass FILE.safetensors")
    return found / name


def _fewest_step_student(folder: Path) -> Path | None:
    """The last checkpoint of the finished round with the fewest steps in a distillation folder, if any: a round
    stopped early (a time limit, a signal) is not a student yet."""
    rounds = sorted(folder.glob(ROUND_FOLDER.replace("{steps:04d}", "[0-9]" * 4)))
    for round_dir in rounds:
        last = latest_checkpoint(round_dir)
        if last is not None and (round_dir / "config.yaml").is_file():
            planned = yaml.safe_load((round_dir / "config.yaml").read_text())["train"]["steps"]
            if int(training_state(last)["step"]) >= planned:
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
