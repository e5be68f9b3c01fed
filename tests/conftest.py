"""Shared fixtures: small photos made from images inside installed wheels, and a micro network config."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from palette.config import Config, apply_overrides, preset

# A network small enough that a training step takes milliseconds on a CPU.
MICRO = [
    "model.image_size=16", "model.base_channels=16", "model.channel_mult=1,2", "model.num_res_blocks=1",
    "model.attention_resolutions=8", "model.head_channels=16", "train.batch_size=4", "train.log_every=1",
    "train.warmup_steps=2", "train.lr=1e-3", "train.sample_every=0", "train.checkpoint_every=1000",
    "data.num_workers=0", "diffusion.sample_steps=4",
]


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(1)  # tests run in parallel processes; one thread each keeps them from fighting
    yield


def micro_config(*overrides: str) -> Config:
    return apply_overrides(preset("tiny"), MICRO + list(overrides))


def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """Four 40x48 RGB photos (astronaut, coffee, chelsea, rocket) as PNG files."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(_photo(name)).resize((48, 40), Image.BICUBIC).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, photo_dir) -> Path:
    """A micro multi-task run (every task) trained for a few steps."""
    from palette.tasks import TASK_NAMES
    from palette.train import train

    run = tmp_path_factory.mktemp("run")
    config = micro_config(f"data.path={photo_dir}", "task.name=multi", f"task.tasks={','.join(TASK_NAMES)}",
                          "train.steps=3")
    train(config, run, progress=False)
    return run


def _kaiming(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=generator)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    return module


def random_inception_v3_compat() -> torch.nn.Module:
    """torch-fidelity's FID Inception-v3, built without its weights (no download) and kaiming-initialised."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=None)
    return _kaiming(net.float(), 0)


def write_random_weights(folder: Path) -> Path:
    """Every metric backbone with random kaiming weights, saved under the standard file names in ``folder``."""
    import torchvision

    from palette import weights as metric_weights

    nets = {
        "inception-v3-compat": random_inception_v3_compat(),
        "resnet50": _kaiming(torchvision.models.resnet50(weights=None), 1),
        "googlenet": _kaiming(torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False), 2),
        "alexnet": _kaiming(torchvision.models.alexnet(weights=None), 3),
    }
    for name, net in nets.items():
        torch.save(net.state_dict(), folder / metric_weights.WEIGHTS[name].filename)
    return folder


@pytest.fixture(scope="session")
def random_weights_dir(tmp_path_factory) -> Path:
    return write_random_weights(tmp_path_factory.mktemp("weights"))


def hold_run_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that takes ``run_dir``'s lock, says so, and keeps it until its stdin closes or it is killed."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from palette.run_folder import RunLock; "
                               "lock = RunLock(sys.argv[1]); print('locked', flush=True); sys.stdin.read()",
                               str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.kill()
    holder.wait()
    holder.stdin.close()
    holder.stdout.close()


class Events:
    """Lines that test subprocesses write to a named pipe as things happen ("step 0 3": rank 0 finished step 3),
    read by the test as they arrive: a test waits on an event, woken by the event itself, never by polling or a
    fixed sleep. Writers open the pipe in append mode and write whole lines (atomic under PIPE_BUF)."""

    def __init__(self, path: Path):
        os.mkfifo(path)
        self.path = path
        # opened for reading and writing: the pipe never reads as closed between two writers' lines
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.lines: list[str] = []
        self._partial = b""

    def close(self) -> None:
        os.close(self.fd)

    def wait_for(self, condition: Callable[[list[str]], bool], what: str, process: subprocess.Popen,
                 timeout: float = 300) -> None:
        """Read lines until ``condition(lines)`` holds. Fails naming ``what`` once ``process`` has exited without
        it (its pidfd wakes the wait), or after ``timeout`` seconds: generous, for a loaded 2-core machine; a
        passing test never waits for the deadline."""
        deadline = time.monotonic() + timeout
        exited = os.pidfd_open(process.pid)
        try:
            while not condition(self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"still no {what} after {timeout:.0f} s")
                ready, _, _ = select.select([self.fd, exited], [], [], left)
                self.read()
                if exited in ready and self.fd not in ready and not condition(self.lines):
                    raise AssertionError(f"the process exited (code {process.wait()}) before {what}")
        finally:
            os.close(exited)

    def read(self) -> list[str]:
        """Take in the whole lines written so far; returns them all."""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            *whole, self._partial = (self._partial + chunk).split(b"\n")
            self.lines += [line.decode() for line in whole]
        return self.lines


@pytest.fixture
def events(tmp_path):
    channel = Events(tmp_path / "events")
    yield channel
    channel.close()


# A script that runs `palette` with its arguments and writes to the events pipe named by the environment variable
# PALETTE_TEST_EVENTS "step <rank> <step>" after every training step and "checkpoint <rank> <step>" after every
# checkpoint (on every process: all wait for it to be complete).
ANNOUNCING_PALETTE = """\
import os, sys
from palette.cli import main
from palette.train import Trainer

def announce(what, trainer):
    with open(os.environ["PALETTE_TEST_EVENTS"], "a") as f:
        f.write(f"{what} {os.environ.get('RANK', '0')} {trainer.step}\\n")

train_step, save = Trainer.train_step, Trainer.save
def announcing_step(self, micro_batches):
    stats = train_step(self, micro_batches)
    announce("step", self)
    return stats
def announcing_save(self):
    path = save(self)
    announce("checkpoint", self)
    return path
Trainer.train_step, Trainer.save = announcing_step, announcing_save
sys.exit(main(sys.argv[1:]))
"""


def announced(lines: list[str], what: str = "step", rank: int = 0) -> int:
    """The last step of the events ``what`` (step or checkpoint) that process ``rank`` announced (0: none yet)."""
    return max((int(step) for kind, r, step in (line.split() for line in lines) if kind == what and int(r) == rank),
               default=0)


def sheet_size(columns: int, rows: int, tile: int = 128) -> tuple[int, int]:
    """(width, height) of a sample sheet: a 16-pixel header of column names, then rows of square tiles, with 4-pixel
    gaps around each tile; a sheet scales images smaller than 128 pixels up to 128."""
    gap, header = 4, 16
    return gap + columns * (tile + gap), header + gap + rows * (tile + gap)


def start_server(command: list[str], ready: str, log: Path, timeout: float, env: dict | None = None
                 ) -> subprocess.Popen:
    """Start the server ``command`` and return once it prints a line holding ``ready`` (the line it prints once it
    takes connections), woken by that line: no polling, no fixed sleep. A thread copies its output to ``log`` as it
    comes, so the pipe never fills. Fails with that output if the process exits first, or after ``timeout`` seconds:
    generous, for a loaded 2-core machine; a passing test never waits for it."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"})
    announced, settled = threading.Event(), threading.Event()  # settled: announced, or the output ended

    def copy_output():
        with open(log, "ab") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if ready.encode() in line:
                    announced.set()
                    settled.set()
        settled.set()

    threading.Thread(target=copy_output, daemon=True).start()
    name = " ".join(map(str, command))
    if not settled.wait(timeout):
        proc.kill()
        raise RuntimeError(f"{name} did not say {ready!r} in {timeout:.0f} s:\n{log.read_text()}")
    if not announced.is_set():
        raise RuntimeError(f"{name} exited (code {proc.wait()}) before saying {ready!r}:\n{log.read_text()}")
    return proc
