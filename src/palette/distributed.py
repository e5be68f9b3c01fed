"""Several processes for sampling and evaluation: the launcher's rank and world size, the process group, the device.

``torchrun --nproc_per_node N $(which palette) sample|eval ...`` (or ``accelerate launch``) starts N processes; each
samples every N-th input and writes its own files. ``sample`` needs nothing else: each process reports its own files
and ends when they are written. ``eval`` waits for every process once, then shares out the metric passes and
gathers them to the main process, which reports.

Processes join one run through the variables torchrun and accelerate launch set (WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), on CPUs (gloo) as on GPUs (NCCL). Processes that another launcher started (srun, mpirun)
without them would each run alone, into the same folder: they are refused with what to run instead.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any, Callable

import torch

from .errors import ArgumentError, PaletteError

COLLECTIVE_TIMEOUT_MINUTES = 60.0  # train.collective_timeout_minutes' default; sample and eval use it as it is

# launchers that start several processes without torchrun's variables: (the variable holding their count, launcher)
OTHER_LAUNCHERS = (("SLURM_STEP_NUM_TASKS", "srun"), ("OMPI_COMM_WORLD_SIZE", "mpirun (Open MPI)"),
                   ("PMI_SIZE", "a PMI launcher (mpirun, srun --mpi)"), ("MV2_COMM_WORLD_SIZE", "mpirun (MVAPICH2)"))


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) set by torchrun / accelerate launch; (0, 1) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def check_launcher() -> None:
    """Refuse to start a process that another launcher started as one of several, without the variables palette
    joins processes by: each would believe it is a one-process run and write the same folder."""
    if "WORLD_SIZE" in os.environ:
        return
    for variable, launcher in OTHER_LAUNCHERS:
        count = os.environ.get(variable, "").strip()
        if count.isdigit() and int(count) > 1:
            raise PaletteError(
                f"this process is one of {count} started by {launcher} ({variable}={count}), but palette joins "
                "processes through torchrun or accelerate launch: start one torchrun per node (e.g. `srun "
                "--ntasks-per-node 1 torchrun --nnodes $SLURM_NNODES --nproc_per_node G --rdzv-backend c10d "
                "--rdzv-endpoint HOST:PORT $(which palette) ...`), or give each process WORLD_SIZE, RANK, "
                "LOCAL_RANK, MASTER_ADDR and MASTER_PORT"
            )


def on_cpu(device: str) -> bool:
    """Whether processes given ``device`` compute on the CPU: ``cpu``, or ``auto`` on a machine without a GPU.
    accelerate joins launched processes on the CPU only when told so; told nothing, each trains alone."""
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def check_joined(num_processes: int, argument: str = "device") -> None:
    """Every process the launcher started is in the process group (``num_processes``, as accelerate formed it); if
    not, the device (the input called ``argument``) must be named."""
    rank, world = rank_and_world()
    if num_processes != world:
        raise ArgumentError(
            argument, f": this is process {rank} of {world} started by a launcher (WORLD_SIZE={world}), but it joined "
            f"a group of {num_processes}: set it to cpu or cuda so that the processes form one run"
        )


def process_group_kwargs(timeout_minutes: float = COLLECTIVE_TIMEOUT_MINUTES) -> dict:
    """``init_process_group`` arguments for accelerate: a collective waits this long before the run fails."""
    return {"timeout": timedelta(minutes=timeout_minutes)}


def check_launched_device(name: str, strict: bool = True, argument: str = "device") -> None:
    """A launched process takes its own GPU (``cuda:LOCAL_RANK``): naming one GPU for all of them is an error (naming
    ``argument``), or (not ``strict``: a device saved in the config of a run resumed on more processes) a warning,
    the index ignored."""
    rank, world = rank_and_world()
    if world > 1 and name.startswith("cuda:"):
        problem = f"{name} names one GPU, but this is process {rank} of {world}: each launched process uses its own GPU"
        if strict:
            raise ArgumentError(argument, f"{problem}; use cuda (or auto)")
        if rank == 0:
            logging.getLogger(__name__).warning("%s %s (cuda:LOCAL_RANK)", argument, problem)


def from_main(value):
    """The main process's ``value`` on every process of the default group (a collective; the others' ``value`` is
    ignored). What processes on several nodes see of a shared filesystem can differ for a while (NFS caches
    listings): decisions taken from files are taken once, by the main process."""
    box = [value if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def decided_by_main(decide: Callable[[], Any], main: bool) -> Any:
    """``decide()`` on the main process (``main``), and its result, or the PaletteError it raised, on every process
    of the default group (a collective): a decision taken from files is taken once, and an error in taking it stops
    every process instead of leaving the others waiting."""
    outcome = None
    if main:
        try:
            outcome = decide()
        except PaletteError as err:
            outcome = err
    outcome = from_main(outcome)
    if isinstance(outcome, PaletteError):
        raise outcome
    return outcome


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
    """The process group of a launched run (gloo on CPU, NCCL on GPUs), or a stand-in for a single process.

    A launched run's group, device and barrier are accelerate's ``PartialState``; this class adds only what it does
    not do (read in accelerate 1.15 and measured here, not assumed):

    - a single process does not create one. ``PartialState`` is a process-wide singleton whose first settings win: a
      later ``PartialState(cpu=True)`` returns the first state and its device unchanged, so sampling after a training
      run in the same process (a notebook, the tests) would get the trainer's device, and it has no notion of a named
      device (``cuda:1``). One process therefore uses the device it asked for, without the 0.4 s import.
    - :func:`check_launcher`, :func:`check_launched_device` and :func:`check_joined` refuse the set-ups that would
      otherwise run as N separate one-process runs writing the same folder; ``PartialState`` reads srun/mpirun ranks
      only for its CPU backend and says nothing when processes fail to form one group.
    - :meth:`from_main` broadcasts a Python object (``PartialState`` has no such collective)."""

    def __init__(self, device: str = "auto"):
        check_launcher()
        self.rank, self.world = rank_and_world()
        self.state = None
        if self.world > 1:
            from accelerate import PartialState

            check_launched_device(device)
            self.state = PartialState(cpu=on_cpu(device), **process_group_kwargs())
            check_joined(self.state.num_processes)

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
