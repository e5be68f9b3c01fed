"""A standing guard for ``palette train``: hostile inputs end the process at once with exit code 2 and one line that
names the input, never a traceback or a hang, and never touch a run that was already in the folder.

Each row runs the real command in a process of its own under a hard timeout, so a regression that hangs fails here
instead of stalling the suite. Add a row for every new way of breaking training that gets fixed. (Sampling, eval, the
Python API and the web app have their rows in a module of their own.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from palette import run_folder
from palette.distributed import OTHER_LAUNCHERS

from conftest import MICRO, hold_run_lock, micro_config, release

TIMEOUT_S = 120  # a refused command takes a few seconds (importing torch); a hang takes for ever
# the micro network's overrides, less those the rows give as flags (a key=value override wins over its flag)
MICRO_FLAGS = [o for o in MICRO if not o.startswith(("model.image_size", "data.num_workers"))]
ABSENT = "/palette-hostile-absent/x/y.png"  # an absolute path that exists nowhere

# runs the command after an injected fault (sys.argv[1], Python source), as the console script does
FAULT_RUNNER = "import sys; exec(sys.argv[1]); from palette.cli import main; sys.exit(main(sys.argv[2:]))"

# a read-only file system below {tmp}/read-only: every folder made there is refused with EROFS, as on a read-only
# mount (the tests run as root, whom chmod would not stop)
READ_ONLY = """
import errno, os
real_mkdir = os.mkdir
def read_only_mkdir(path, *args, **kwargs):
    if str(path).startswith({tmp!r} + "/read-only"):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return real_mkdir(path, *args, **kwargs)
os.mkdir = read_only_mkdir
"""


@dataclass
class Row:
    """``palette ARGS`` (``{data}``, ``{run}``, ``{new}``, ``{file}``, ``{list}``, ``{tmp}`` filled in), what the
    error line must name, and how the world is made hostile first."""

    args: list[str]
    names: list[str]
    prepare: str = ""  # the name of a function below that damages the pre-existing run
    fault: str = ""  # Python source run in the command's process before it starts
    env: dict[str, str] = field(default_factory=dict)


NEW_RUN = ["train", "--task", "inpainting", "--data", "{data}", "--out", "{new}", "--preset", "tiny",
           "--image-size", "16", "--steps", "2", "--workers", "0", "--no-progress", *MICRO_FLAGS]
RESUME = ["train", "--out", "{run}", "--resume", "--steps", "2", "--no-progress"]

ROWS = {
    "negative learning rate": Row([*NEW_RUN, "train.lr=-1"], ["train.lr", "-1"]),
    "NaN learning rate": Row([*NEW_RUN, "train.lr=nan"], ["train.lr", "nan"]),
    "infinite learning rate": Row([*NEW_RUN, "train.lr=inf"], ["train.lr", "inf"]),
    "negative workers": Row([*NEW_RUN, "--workers", "-1"], ["--workers", "-1"]),
    "zero image size": Row([*NEW_RUN, "--image-size", "0"], ["--image-size", "0"]),
    "negative image size": Row([*NEW_RUN, "--image-size", "-16"], ["--image-size", "-16"]),
    "zero checkpoint interval": Row([*NEW_RUN, "train.checkpoint_every=0"], ["train.checkpoint_every"]),
    "zero log interval": Row([*NEW_RUN, "train.log_every=0"], ["train.log_every"]),
    "Adam beta of 1 or more": Row([*NEW_RUN, "train.adam_betas=0.9,1.5"], ["train.adam_betas"]),
    "negative warm-up": Row([*NEW_RUN, "train.warmup_steps=-5"], ["train.warmup_steps"]),
    "NaN collective timeout": Row([*NEW_RUN, "train.collective_timeout_minutes=nan"],
                                  ["train.collective_timeout_minutes"]),
    "--out is a file": Row([*NEW_RUN[:6], "{file}", *NEW_RUN[7:]], ["--out", "{file}", "is a file"]),
    "--out is a file, resumed": Row(["train", "--out", "{file}", "--resume"], ["--out", "{file}", "is a file"]),
    "--out cannot be created": Row([*NEW_RUN[:6], "/sys/palette-hostile/run", *NEW_RUN[7:]],
                                   ["--out", "/sys/palette-hostile/run", "cannot create"]),
    "--out on a read-only file system": Row([*NEW_RUN[:6], "{tmp}/read-only/run", *NEW_RUN[7:]],
                                            ["--out", "{tmp}/read-only/run", "Read-only file system"],
                                            fault=READ_ONLY),
    "resuming a folder that holds no run": Row(["train", "--out", "{new}", "--resume", "--no-progress"],
                                               ["--resume", "{new}", "holds no run"]),
    "a list naming an absolute path that does not exist": Row([*NEW_RUN[:4], "{list}", *NEW_RUN[5:]],
                                                              [f" {ABSENT}: "]),
    "a second run into an existing run": Row([*NEW_RUN[:6], "{run}", *NEW_RUN[7:]], ["--out", "{run}", "--resume"]),
    "resuming with a NaN learning rate": Row([*RESUME, "train.lr=nan"], ["train.lr", "nan"]),
    "resuming a run another process holds": Row(RESUME, ["--out", "{run}", "in use", "pid {holder}"],
                                                prepare="hold_the_lock"),
    "resuming a run whose latest points out of it": Row(RESUME, ["latest", "../../other-run"],
                                                        prepare="point_latest_out_of_the_run"),
    "resuming weights that hold NaN": Row(RESUME, ["model.safetensors", "{tensor}", "NaN"],
                                          prepare="put_nan_in_the_weights"),
    "one of several processes srun started": Row(NEW_RUN, ["srun", "SLURM_STEP_NUM_TASKS=2", "torchrun"],
                                                 env={"SLURM_STEP_NUM_TASKS": "2"}),
    "sample into a file": Row(["sample", "--checkpoint", "{run}", "--task", "inpainting", "--mask", "center",
                               "--input", "{data}/coffee.png", "--out", "{file}", "--no-progress"],
                              ["--out", "{file}", "is a file"]),
    "sample onto a read-only file system": Row(["sample", "--checkpoint", "{run}", "--task", "inpainting", "--mask",
                                                "center", "--input", "{data}/coffee.png", "--out",
                                                "{tmp}/read-only/samples", "--no-progress"],
                                               ["--out", "{tmp}/read-only/samples", "Read-only file system"],
                                               fault=READ_ONLY),
}


@pytest.fixture(scope="session")
def existing_run(tmp_path_factory, photo_dir) -> Path:
    """A run folder of one training step, as a user's run would be before a hostile command meets it."""
    from palette.train import train

    run = tmp_path_factory.mktemp("existing") / "run"
    train(micro_config(f"data.path={photo_dir}", "task.name=inpainting", "train.steps=1"), run, progress=False)
    return run


# ---- ways of damaging the pre-existing run (Row.prepare); each returns the values its row's message names --------


def hold_the_lock(run: Path, stack) -> dict[str, str]:
    """Another process holds the run folder (it trains into it) until the test ends."""
    holder = hold_run_lock(run)
    stack.callback(release, holder)
    return {"holder": str(holder.pid)}


def point_latest_out_of_the_run(run: Path, stack) -> dict[str, str]:
    other = run.parent / "other-run"
    shutil.copytree(run, other)
    outside = run_folder.latest_checkpoint(other).name
    (run / "checkpoints" / "latest").write_text(f"../../other-run/checkpoints/{outside}")
    return {}


def put_nan_in_the_weights(run: Path, stack) -> dict[str, str]:
    weights = run_folder.latest_checkpoint(run) / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = sorted(tensors)[len(tensors) // 2]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(weights), metadata=metadata)
    return {"tensor": name}


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_nothing_lost_or_overwritten(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """Every file is still there with its bytes; the log may have grown, and ``lock`` names its latest holder."""
    for name, content in before.items():
        assert name in after, f"{name} was removed"
        if name == "train.log":
            assert after[name].startswith(content), "train.log was rewritten"
        elif name != run_folder.LOCK_FILE:
            assert after[name] == content, f"{name} was overwritten"


@pytest.mark.integration
@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_a_hostile_train_command_ends_with_one_line_naming_its_input(row, tmp_path, photo_dir, existing_run):
    run = tmp_path / "run"
    shutil.copytree(existing_run, run)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photo_dir / 'coffee.png'}\n{ABSENT}\n")
    (tmp_path / "file").write_text("a file, not a folder\n")
    values = {"data": str(photo_dir), "run": str(run), "new": str(tmp_path / "new"), "file": str(tmp_path / "file"),
              "list": str(listing), "tmp": str(tmp_path)}
    with contextlib.ExitStack() as stack:
        if row.prepare:
            values.update(globals()[row.prepare](run, stack))
        before = _contents(run)
        args = [a.format(**values) for a in row.args]
        command = ([sys.executable, "-c", FAULT_RUNNER, row.fault.format(**values)] if row.fault
                   else [sys.executable, "-m", "palette"]) + args
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                                env={**_alone(os.environ), "PYTHONWARNINGS": "ignore", **row.env})
        after = _contents(run)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    prefix = f"palette {args[0]}: error: "
    assert result.stderr.count(prefix) == 1, result.stderr[-3000:]
    error = result.stderr[result.stderr.index(prefix):]  # the message, and the files it lists if it lists any
    for name in row.names:
        assert name.format(**values) in error, error
    _assert_nothing_lost_or_overwritten(before, after)


def _alone(environ) -> dict[str, str]:
    """The environment without any launcher's variables (the suite itself may run under one)."""
    launched = {"WORLD_SIZE", "RANK", "LOCAL_RANK", *(variable for variable, _ in OTHER_LAUNCHERS)}
    return {k: v for k, v in environ.items() if k not in launched}


def test_an_absolute_path_of_a_list_is_reported_as_given(tmp_path, photo_dir):
    """Paths of a list are looked for as given, then below the list's folder; one found nowhere keeps its own name."""
    from palette.data_files import list_images

    listing = tmp_path / "list.txt"
    listing.write_text(f"{ABSENT}\nrelative/missing.png\n")
    assert list_images(listing) == [Path(ABSENT), tmp_path / "relative" / "missing.png"]
