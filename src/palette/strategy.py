"""How the processes of a run share its training: one object per strategy owns the wrapping of the network, the
gradient synchronisation between micro-batches, autocast, gradient clipping, the EMA of the weights and the
checkpoints, so the trainer reads the same whatever runs it.

- :class:`DataParallel`, also the strategy of a single process: every process holds the whole network, which
  accelerate wraps in DDP when there are several processes. Checkpoints hold whole tensors, written by the main
  process.
- :class:`FullySharded`: FSDP2 (:mod:`palette.sharding`): every process holds 1/N of the parameters, gradients, Adam
  moments and EMA, and writes and reads only its own shards of them in a checkpoint. The main process also gathers
  the EMA into ``ema.safetensors`` at each checkpoint: that single file is what ``palette sample``, the Python API,
  the web app and the training sheets load, so a sharded run is sampled like any other (the EMA is a quarter of the
  state a checkpoint holds; the weights and the optimizer moments stay sharded). ``palette export`` makes a single
  file of the raw weights (``--no-ema``) from the shards.

Either strategy resumes either kind of checkpoint on any number of processes: torch's
``torch.distributed.checkpoint.state_dict`` functions move whole tensors into shards and DCP reshards shards.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt, run_folder
from .config import Config, use_channels_last
from .devices import resolve_device
from .distributed import (check_joined, check_launched_device, check_launcher, decided_by_main, on_cpu,
                          process_group_kwargs)
from .errors import ArgumentError
from .sharding import full_tensor, load_shards, local, save_shards, shard_network


def make_accelerator(config: Config):
    """The accelerate state for ``train.device`` and ``train.mixed_precision`` (CPU runs use gloo between processes)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import InitProcessGroupKwargs

    # accelerate keeps one state per process; a process that trains several runs (a notebook, the tests) with other
    # devices or precisions starts from a clean one (a launched run keeps its process group). accelerate has no
    # public reset; this is the one its own tests use.
    AcceleratorState._reset_state(reset_partial_state=int(os.environ.get("WORLD_SIZE", 1)) == 1)
    GradientState._reset_state()

    name = config.train.device
    check_launcher()
    check_launched_device(name, strict=False, argument="train.device")  # it may come from a resumed run's config
    device = resolve_device(name, "train.device") if name != "auto" else None
    if device is not None and device.type == "cuda" and device.index is not None and "LOCAL_RANK" not in os.environ:
        torch.cuda.set_device(device)  # one process on a chosen GPU
    cpu = on_cpu(name)
    if config.train.mixed_precision == "fp16" and (cpu or not torch.cuda.is_available()):
        raise ArgumentError("train.mixed_precision", "fp16 needs a CUDA GPU; use bf16 on a CPU")
    if config.train.low_precision_norm and config.train.mixed_precision == "no":
        raise ArgumentError("train.low_precision_norm", "needs train.mixed_precision bf16 or fp16")
    timeout = process_group_kwargs(config.train.collective_timeout_minutes)
    accelerator = Accelerator(cpu=cpu, mixed_precision=config.train.mixed_precision,
                              kwargs_handlers=[InitProcessGroupKwargs(**timeout)])
    check_joined(accelerator.num_processes, "train.device")
    return accelerator


def check_sharding(config: Config) -> None:
    """Refuse what FSDP does not train (the trainer checks it before it scans the data)."""
    if config.train.sharding == "fsdp" and config.train.mixed_precision == "fp16":
        raise ArgumentError("train.sharding", "fsdp trains in fp32 or with train.mixed_precision bf16, not fp16")


def make_strategy(config: Config, accelerator) -> "Strategy":
    """FSDP for ``train.sharding=fsdp`` on several processes; otherwise DDP (with one process, plain training).
    :func:`check_sharding` has checked the config."""
    if config.train.sharding == "fsdp" and accelerator.num_processes > 1:
        return FullySharded(config, accelerator)
    return DataParallel(config, accelerator)


def _full(**options):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **options)


class Strategy(abc.ABC):
    """The part of training that depends on how the processes share the network (see the module's docstring).

    :meth:`wrap` takes the model, the same on every process; then ``model`` is what a micro-batch runs through,
    ``net`` the network being trained, ``ema`` the EMA of its weights and ``optimizer`` its optimizer."""

    name = ""
    sharded = False  # whether each process holds only its shards of the weights

    def __init__(self, config: Config, accelerator):
        self.config, self.accelerator = config, accelerator
        self.device = accelerator.device
        self.main, self.world = accelerator.is_main_process, accelerator.num_processes

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of the weights and of the inputs (FSDP2 shards contiguous parameters only)."""
        if use_channels_last(self.config.train.channels_last, self.device) and not self.sharded:
            return torch.channels_last
        return torch.contiguous_format

    def describe(self) -> str:
        return "one process" if self.world == 1 else self.name.upper()

    @abc.abstractmethod
    def wrap(self, model: nn.Module) -> None:
        """Set up ``net``, ``ema``, ``optimizer`` and ``model`` for ``model`` (a :class:`palette.model.PaletteModel`)."""

    @abc.abstractmethod
    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        """The context a micro-batch's forward and backward passes run in (``last``: the step's last micro-batch)."""

    @abc.abstractmethod
    def forward(self, **inputs) -> torch.Tensor:
        """Each example's loss of a micro-batch, under autocast for mixed precision."""

    @abc.abstractmethod
    def clip_gradients(self) -> float:
        """Clip the gradients' norm to ``train.grad_clip`` (0: no clipping); returns the norm before clipping."""

    @abc.abstractmethod
    def ema_state_dict(self, everywhere: bool = False) -> dict[str, torch.Tensor]:
        """The whole EMA weights (on the main process; on every process with ``everywhere``)."""

    @abc.abstractmethod
    def save(self, run_dir: Path, step: int, training: dict[str, Any], keep: int) -> Path | None:
        """Write checkpoint ``step`` with the ``training`` state, keeping the newest ``keep``; returns it on the main
        process. Every process calls it."""

    def _make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        cfg = self.config.train
        return torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                weight_decay=cfg.weight_decay)

    # ---- a training step ------------------------------------------------------------------------------------------

    @property
    def _max_norm(self) -> float:
        return self.config.train.grad_clip if self.config.train.grad_clip > 0 else math.inf

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def optimizer_step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """EMA <- decay * EMA + (1 - decay) * weights, each process on the tensors it holds."""
        ema = [local(p) for p in self.ema.parameters()]
        torch._foreach_lerp_(ema, [local(p) for p in self.net.parameters()], 1 - decay)

    # ---- checkpoints ----------------------------------------------------------------------------------------------

    def restore(self, checkpoint: Path) -> dict[str, Any]:
        """Load the weights, EMA and optimizer state of ``checkpoint`` (whole or sharded, written on any number of
        processes) into the wrapped network; returns its training state. Every process calls it."""
        # read once: a whole checkpoint's state holds all the moments
        optimizer, training = run_folder.read_training_state(checkpoint)
        if run_folder.is_sharded(checkpoint):
            run_folder.check_shards(checkpoint)
            self._load_shards(checkpoint, optimizer["param_groups"])
        else:
            self._load_whole(checkpoint, optimizer)
        return training

    def _load_whole(self, checkpoint: Path, optimizer: dict[str, Any]) -> None:
        """A checkpoint of whole tensors: every process reads them all and keeps what it holds."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(self.net, ckpt.read_weights(checkpoint / "model.safetensors")[0], options=_full())
        set_model_state_dict(self.ema, ckpt.read_weights(checkpoint / "ema.safetensors")[0], options=_full())
        set_optimizer_state_dict(self.net, self._torch_optimizer, _by_name(optimizer, self.net), options=_full())

    def _load_shards(self, checkpoint: Path, groups: list[dict[str, Any]]) -> None:
        """A sharded checkpoint: each process reads the pieces of what it holds (the whole tensors when it holds
        them whole); ``groups`` are the optimizer's parameter groups, from the training state."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        state, _ = self._held_state()
        load_shards(checkpoint / run_folder.SHARDS, state)
        set_model_state_dict(self.net, state["model"])
        set_model_state_dict(self.ema, state["ema"])
        set_optimizer_state_dict(self.net, self._torch_optimizer, {"state": state["optimizer"],
                                                                   "param_groups": groups})

    def _held_state(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The weights, EMA and optimizer moments as this process holds them, by parameter name (tensors that share
        their storage), and the optimizer's parameter groups."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        optimizer = get_optimizer_state_dict(self.net, self._torch_optimizer)
        return ({"model": get_model_state_dict(self.net), "ema": get_model_state_dict(self.ema),
                 "optimizer": optimizer["state"]}, optimizer["param_groups"])

    @property
    def _torch_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper holds torch's optimizer


def _by_name(optimizer: dict[str, Any], net: nn.Module) -> dict[str, Any]:
    """An optimizer state dict of a whole checkpoint (parameters numbered in ``net.parameters()`` order) keyed by
    parameter name, as ``set_optimizer_state_dict`` takes it."""
    names = [name for name, _ in net.named_parameters()]
    groups = [{**group, "params": [names[int(i)] for i in group["params"]]} for group in optimizer["param_groups"]]
    return {"state": {names[int(i)]: entries for i, entries in optimizer["state"].items()}, "param_groups": groups}


class DataParallel(Strategy):
    """Every process holds the whole network, EMA and optimizer; accelerate wraps the model (DDP on several
    processes), all-reduces the gradients on the last micro-batch of a step and autocasts the forward pass."""

    name = "ddp"

    def wrap(self, model: nn.Module) -> None:
        self.net = model.net
        self.ema = copy.deepcopy(model.net).requires_grad_(False)
        optimizer = self._make_optimizer(model.net)
        if self.config.train.compile:
            model.net.compile()
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    def accumulating(self, last: bool):
        """The context of a micro-batch: gradients are all-reduced on the last one of a step only."""
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)

    def forward(self, **inputs) -> torch.Tensor:
        return self.model(**inputs)  # the prepared model autocasts its forward pass itself

    def clip_gradients(self) -> float:
        return float(self.accelerator.clip_grad_norm_(self.net.parameters(), self._max_norm))

    def ema_state_dict(self, everywhere: bool = False) -> dict[str, torch.Tensor]:
        return self.ema.state_dict()

    def save(self, run_dir: Path, step: int, training: dict[str, Any], keep: int) -> Path | None:
        """The main process writes the whole tensors; returns the checkpoint there (None elsewhere)."""
        if not self.main:
            return None
        return run_folder.write_checkpoint(run_dir, step, self.net.state_dict(), self.ema.state_dict(),
                                     self._torch_optimizer.state_dict(), self.config, training, keep=keep)


class FullySharded(Strategy):
    """FSDP2: the network and its EMA sharded alike over the processes; the optimizer holds the shards' moments."""

    name = "fsdp"
    sharded = True

    def wrap(self, model: nn.Module) -> None:
        self.ema = copy.deepcopy(model.net).requires_grad_(False)
        for net in (model.net, self.ema):
            shard_network(net, self.device.type, self.world)
        self.net, self.model = model.net, model  # sharded in place: the model trains as it is
        self.optimizer = self._make_optimizer(model.net)
        if self.config.train.compile:
            model.net.compile()

    def accumulating(self, last: bool):
        # gradients are reduce-scattered on the last micro-batch of a step only
        self.net.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def forward(self, **inputs) -> torch.Tensor:
        with self.accelerator.autocast():  # the model is not wrapped by accelerate: autocast its forward pass here
            return self.model(**inputs)

    def clip_gradients(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self._max_norm)
        return float(full_tensor(norm))  # the norm over all shards

    def ema_state_dict(self, everywhere: bool = False) -> dict[str, torch.Tensor]:
        """The whole EMA weights, gathered a tensor at a time (a collective: every process calls it): on the main
        process, on the CPU; with ``everywhere`` on every process, on its device. Elsewhere an empty dict."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.ema, options=_full(cpu_offload=not everywhere))

    def save(self, run_dir: Path, step: int, training: dict[str, Any], keep: int) -> Path | None:
        """Every process writes its shards into the checkpoint's temporary folder, then the main process writes the
        gathered EMA and the training state and completes the folder. A collective: every process calls it."""
        tmp = self._new_checkpoint_folder(run_dir, step)
        with run_folder.checkpoint_errors(run_dir, step):
            try:
                state, groups = self._held_state()
                save_shards(tmp / run_folder.SHARDS, state)
                ema = self.ema_state_dict()  # every process takes part; the main one keeps it
                if not self.main:
                    return None
                ckpt.save_weights(tmp / "ema.safetensors", ema, self.config, step=step, weights="ema")
                run_folder.write_training_state(tmp, {"state": {}, "param_groups": groups}, training)
            except BaseException:
                if self.main:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
            return run_folder.complete_checkpoint(run_dir, tmp, step, keep)

    def _new_checkpoint_folder(self, run_dir: Path, step: int) -> Path:
        """The temporary folder the main process makes for checkpoint ``step``, on every process (or its error)."""
        def make() -> Path:
            with run_folder.checkpoint_errors(run_dir, step):
                return run_folder.new_checkpoint_folder(run_dir, step)

        return decided_by_main(make, self.main)
