"""Several processes for sampling and evaluation: the launcher's rank and world size, the process group, the device.

``torchrun --nproc_per_node N $(which palette) sample|eval ...`` (or ``accelerate launch``) starts N processes; each
samples every N-th input and writes its own files, so nothing needs gathering but the end: the processes wait for
each other once, then the main one reports (and, for ``eval``, computes the metrics).
"""

from __future__ import annotations

import os

import torch


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) set by torchrun / accelerate launch; (0, 1) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class Processes:
    """The process group of a launched run (gloo on CPU, NCCL on GPUs), or a stand-in for a single process."""

    def __init__(self, device: str = "auto"):
        self.rank, self.world = rank_and_world()
        self.state = None
        if self.world > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=device == "cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str | torch.device:
        """Each process's own GPU when several share a node; the requested device otherwise."""
        if self.state is not None and requested in ("auto", "cuda"):
            return self.state.device
        return requested

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()
