"""Fully sharded data parallel training (FSDP2, ``torch.distributed.fsdp.fully_shard``) of the UNet.

With ``train.sharding=fsdp`` each of the network's stages (and then the whole network) is sharded over the processes:
every process keeps 1/N of the parameters, gradients, Adam moments and EMA, and gathers a stage's parameters only
while it runs. Checkpoints hold the full, unsharded tensors (the same files DDP writes), so a run can be resumed
with either strategy on any number of processes.

Gathering full tensors is a collective: every process calls :func:`full_state_dict`, :func:`full_optimizer_state`
and :meth:`ShardedEMA.full_state_dict` in the same order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _dtensor():
    from torch.distributed.tensor import DTensor

    return DTensor


def shard_network(net: nn.Module, device_type: str, world: int) -> nn.Module:
    """Shard ``net`` in place over ``world`` processes on ``device_type`` (its own mesh: a CPU run on a GPU node stays
    on the CPU): one FSDP unit per stage of the UNet (down, middle, up), then the rest."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from .unet import Stage

    mesh = init_device_mesh(device_type, (world,))
    for module in net.modules():
        if isinstance(module, Stage):
            fully_shard(module, mesh=mesh)
    fully_shard(net, mesh=mesh)
    return net


def full_tensor(value: Any) -> Any:
    return value.full_tensor() if isinstance(value, _dtensor()) else value


def _gather(value: Any, keep: bool, to_cpu: bool = True) -> Any:
    """``value`` unsharded (a collective for a DTensor), on the CPU, where ``keep``; None elsewhere.

    One tensor at a time, so a process never holds more than one full tensor on its device."""
    value = full_tensor(value)
    if not keep:
        return None
    return value.cpu() if to_cpu and torch.is_tensor(value) else value


def full_state_dict(net: nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """The unsharded state dict on the CPU (collective when sharded); empty where not ``keep``."""
    out = {k: _gather(v, keep) for k, v in net.state_dict().items()}
    return out if keep else {}


def full_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool = True) -> dict[str, Any]:
    """The optimizer's state dict with every sharded moment gathered to the CPU (collective when sharded); empty
    where not ``keep``."""
    state = optimizer.state_dict()
    gathered = {i: {k: _gather(v, keep) for k, v in entries.items()} for i, entries in state["state"].items()}
    return {"state": gathered, "param_groups": state["param_groups"]} if keep else {}


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``full`` distributed as the sharded parameter ``param`` is (a DTensor of the same placements)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(device=param.device, dtype=param.dtype), param.device_mesh, param.placements)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full (checkpointed) optimizer state into an optimizer of sharded parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded = {}
    for index, entries in state["state"].items():
        param = params[int(index)]
        sharded[index] = {
            k: shard_like(v, param) if torch.is_tensor(v) and isinstance(param, _dtensor()) and v.shape == param.shape
            else v
            for k, v in entries.items()
        }
    optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})


class ShardedEMA:
    """The EMA of a sharded network, kept as each process's shards of the parameters."""

    def __init__(self, net: nn.Module, full: dict[str, torch.Tensor]):
        self.net = net
        self.names = [name for name, _ in net.named_parameters()]
        self.shards = [shard_like(full[name], p).to_local().clone() for name, p in net.named_parameters()]
        for shard, p in zip(self.shards, net.parameters()):
            if shard.shape != p.to_local().shape:
                raise RuntimeError(f"EMA shard {tuple(shard.shape)} does not match its parameter's "
                                   f"{tuple(p.to_local().shape)}")
        self.buffers = {k: v.detach().clone() for k, v in full.items() if k not in set(self.names)}
        self.order = list(full)

    @torch.no_grad()
    def update(self, decay: float) -> None:
        torch._foreach_lerp_(self.shards, [p.to_local() for p in self.net.parameters()], 1 - decay)

    def full_state_dict(self, keep: bool = True, to_cpu: bool = True) -> dict[str, torch.Tensor]:
        """The unsharded EMA weights (collective), a tensor at a time; empty where not ``keep``."""
        DTensor = _dtensor()
        out = dict(self.buffers)
        for name, shard, p in zip(self.names, self.shards, self.net.parameters()):
            out[name] = _gather(DTensor.from_local(shard, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                                   stride=p.stride()), keep, to_cpu)
        return {k: out[k] for k in self.order} if keep else {}
