"""Several processes for sampling and evaluation: the launcher's rank and world size, the process group, the device.

``torchrun --nproc_per_node N $(which palette) sample|eval ...`` (or ``accelerate launch``) starts N processes; each
samples every N-th input and writes its own files. ``sample`` needs nothing else: each process reports its own files
and ends when they are written. ``eval`` waits for every process once, then shares out the metric passes and
gathers them to the main process, which reports.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch

from .errors import PaletteError

COLLECTIVE_TIMEOUT_MINUTES = 60.0  # train.collective_timeout_minutes' default; sample and eval use it as it is


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) set by torchrun / accelerate launch; (0, 1) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def process_group_kwargs(timeout_minutes: float = COLLECTIVE_TIMEOUT_MINUTES) -> dict:
    """``init_process_group`` arguments for accelerate: a collective waits this long before the run fails."""
    return {"timeout": timedelta(minutes=timeout_minutes)}


def check_launched_device(name: str, strict: bool = True) -> None:
    """A launched process takes its own GPU (``cuda:LOCAL_RANK``): naming one GPU for all of them is an error, or
    (not ``strict``: a device saved in the config of a run resumed on more processes) a warning, the index ignored."""
    rank, world = rank_and_world()
    if world > 1 and name.startswith("cuda:"):
        message = (f"--device {name} names one GPU, but this is process {rank} of {world}: each launched process uses "
                   f"its own GPU")
        if strict:
            raise PaletteError(f"{message}; pass --device cuda (or auto)")
        if rank == 0:
            logging.getLogger(__name__).warning("%s (cuda:LOCAL_RANK)", message)


def from_main(value):
    """The main process's ``value`` on every process of the default group (a collective; the others' ``value`` is
    ignored). What processes on several nodes see of a shared filesystem can differ for a while (NFS caches
    listings): decisions taken from files are taken once, by the main process."""
    box = [value if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_interleaved(part: list, total: int, main_only: bool = False) -> list | None:
    """The results of the processes' shares of ``total`` items, process r having done items r, r + N, r + 2N, ...
    (``part`` is this process's), back in the items' order: on every process, or with ``main_only`` on the main
    process only (None elsewhere). A collective."""
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    if main_only:
        parts = [None] * world if rank == 0 else None
        torch.distributed.gather_object(part, parts, dst=0)
        if parts is None:
            return None
    else:
        parts = [None] * world
        torch.distributed.all_gather_object(parts, part)
    ordered = [None] * total
    for r, share in enumerate(parts):
        ordered[r::world] = share
    return ordered


class Processes:
    """The process group of a launched run (gloo on CPU, NCCL on GPUs), or a stand-in for a single process."""

    def __init__(self, device: str = "auto"):
        self.rank, self.world = rank_and_world()
        self.state = None
        if self.world > 1:
            from accelerate import PartialState

            check_launched_device(device)
            self.state = PartialState(cpu=device == "cpu", **process_group_kwargs())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str | torch.device:
        """Each process's own GPU when several share a node; the requested device otherwise."""
        if self.state is not None and requested in ("auto", "cuda"):
            return self.state.device
        return requested

    def from_main(self, value):
        """:func:`from_main` in a launched run; ``value`` itself for a single process."""
        return value if self.state is None else from_main(value)

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()
