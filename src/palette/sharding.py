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


def shard_network(net: nn.Module) -> nn.Module:
    """Shard ``net`` in place: one FSDP unit per stage of the UNet (down, middle, up), then the rest."""
    from torch.distributed.fsdp import fully_shard

    from .unet import Stage

    for module in net.modules():
        if isinstance(module, Stage):
            fully_shard(module)
    fully_shard(net)
    return net


def is_sharded(net: nn.Module) -> bool:
    return any(isinstance(p, _dtensor()) for p in net.parameters())


def full_tensor(value: Any) -> Any:
    return value.full_tensor() if isinstance(value, _dtensor()) else value


def full_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict (collective when sharded)."""
    return {k: full_tensor(v) for k, v in net.state_dict().items()}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with every sharded moment gathered (collective when sharded)."""
    state = optimizer.state_dict()
    return {"state": {i: {k: full_tensor(v) for k, v in entries.items()} for i, entries in state["state"].items()},
            "param_groups": state["param_groups"]}


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

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The unsharded EMA weights (collective)."""
        DTensor = _dtensor()
        out = dict(self.buffers)
        for name, shard, p in zip(self.names, self.shards, self.net.parameters()):
            out[name] = DTensor.from_local(shard, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                           stride=p.stride()).full_tensor()
        return {k: out[k] for k in self.order}
