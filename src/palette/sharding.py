"""Fully sharded data parallel training (FSDP2, ``torch.distributed.fsdp.fully_shard``) of the UNet, and its sharded
checkpoints through torch's distributed checkpoint (DCP).

With ``train.sharding=fsdp`` each of the network's stages (and then the whole network) is sharded over the processes:
every process keeps 1/N of the parameters, gradients, Adam moments and EMA, and gathers a stage's parameters only
while it runs.

A checkpoint's shards are written by DCP in its safetensors format (``HuggingFaceStorageWriter`` with
``save_distributed``): each process writes one file, ``shards/shard-0000R-model-00001-of-00001.safetensors``, with
its pieces of every tensor and, in the file's JSON header, where each piece sits in the whole tensor. DCP's reader
(``HuggingFaceStorageReader``) builds its plan from those JSON headers and reads tensors with ``safe_open`` slices:
each process reads only the pieces its own shards need, on any number of processes (DCP reshards), and nothing is
unpickled. DCP's default ``FileSystemReader`` would ``pickle.load`` a ``.metadata`` file (torch 2.14's
``filesystem.py``): it is not used.

That reader takes the files it finds for the whole checkpoint: it neither knows how many there should be nor checks
that the pieces cover each tensor, and a lost file would leave its pieces at whatever the tensors held before. The
files are counted against the processes that wrote them (:func:`missing_shards`), the pieces are checked to add up to
each tensor, and the tensors read are checked for NaN and infinity, as whole checkpoints' are.
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import first_non_finite, non_finite_error
from .errors import PaletteError


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


@functools.cache
def _dtensor() -> type:
    from torch.distributed.tensor import DTensor  # imported on first use: inference never needs it

    return DTensor


def full_tensor(value: Any) -> Any:
    """``value`` unsharded (a collective for a DTensor)."""
    return value.full_tensor() if isinstance(value, _dtensor()) else value


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of ``tensor`` (the tensor itself when it is not sharded), sharing its storage."""
    return tensor.to_local() if isinstance(tensor, _dtensor()) else tensor


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def save_shards(folder: Path, state: dict[str, Any]) -> None:
    """Each process writes its shards of ``state`` (nested dicts of tensors and DTensors; a tensor that is not sharded
    is written once) into its own file in ``folder``. A collective: every process calls it, and every process raises
    the first process's error (an OSError for a full disk) when any fails."""
    import torch.distributed.checkpoint as dcp

    writer = dcp.HuggingFaceStorageWriter(str(folder), save_distributed=True)
    try:
        dcp.save(state, storage_writer=writer)  # only FSDP runs, always launched, write shards
    except dcp.CheckpointException as err:
        raise _first_failure(err) from None


def missing_shards(folder: Path, processes: int) -> list[str]:
    """The files that ``processes`` processes write into ``folder`` (DCP names process r's
    ``shard-0000{r+1}-model-00001-of-00001.safetensors``) and that are not there, as ``shard-0000{r+1}-*`` patterns."""
    present = [path.name for path in Path(folder).glob("shard-*.safetensors")]
    expected = (f"shard-{rank:05d}-" for rank in range(1, processes + 1))
    return [f"{start}*" for start in expected if not any(name.startswith(start) for name in present)]


def load_shards(folder: Path, state: dict[str, Any]) -> None:
    """Fill the tensors of ``state`` in place from the shards in ``folder``, each process reading the pieces of its own
    shards only (with one process, or none launched, the whole tensors); shards that do not cover their tensors, or
    hold NaN or infinity, are refused. A collective when launched."""
    import torch.distributed.checkpoint as dcp

    _check_coverage(_stored_tensors(folder), folder)
    try:
        with warnings.catch_warnings():  # DCP warns that one process loads alone, which is what is meant
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(state, storage_reader=dcp.HuggingFaceStorageReader(str(folder)), no_dist=not _distributed())
    except dcp.CheckpointException as err:
        raise PaletteError(f"checkpoint {folder.parent}: cannot read its shards ({_first_failure(err)})") from None
    except Exception as err:  # a file that is not safetensors, a tensor missing from the shards
        raise PaletteError(f"checkpoint {folder.parent}: cannot read its shards ({err})") from None
    _check_finite(state, folder)


def _stored_tensors(folder: Path) -> dict[str, Any]:
    """What the shards in ``folder`` hold, from their JSON headers: each tensor's size, type and pieces."""
    import torch.distributed.checkpoint as dcp

    try:
        return dcp.HuggingFaceStorageReader(str(folder)).read_metadata().state_dict_metadata
    except Exception as err:  # a file that is not safetensors
        raise PaletteError(f"checkpoint {folder.parent}: cannot read its shards ({err})") from None


def _check_coverage(stored: dict[str, Any], folder: Path) -> None:
    """Every tensor's pieces add up to the whole of it (the reader takes a tensor's size from the pieces it finds)."""
    for key, meta in stored.items():
        held, whole = sum(math.prod(chunk.sizes) for chunk in meta.chunks), math.prod(meta.size)
        if held != whole:
            raise PaletteError(f"checkpoint {folder.parent}: its shards hold {held} of the {whole} values of {key}; "
                               "a shard file is missing or comes from another checkpoint")


def _check_finite(state: dict[str, Any], folder: Path) -> None:
    """Refuse shards holding NaN or infinity, on every process when any process's own pieces hold one."""
    found = first_non_finite(dict(_local_tensors(state)))
    if _distributed():
        everyone = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, found)
        found = next((name for name in everyone if name is not None), None)
    if found is not None:
        raise non_finite_error(folder, found)


def _local_tensors(state: dict[str, Any], prefix: str = ""):
    """(name, this process's part) of every tensor in the nested dicts of ``state``, named as in the shards."""
    for key, value in state.items():
        if isinstance(value, dict):
            yield from _local_tensors(value, f"{prefix}{key}.")
        elif torch.is_tensor(value):
            yield f"{prefix}{key}", local(value)


def whole_from_shards(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """The whole tensors of ``name`` (``model``, ``ema``) assembled from the shards in ``folder``, on the CPU, in this
    one process (no process group needed). The tensors' names, sizes and types come from the shards' JSON
    headers."""
    stored = _stored_tensors(folder)
    prefix = f"{name}."
    whole = {key[len(prefix):]: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
             for key, meta in stored.items() if key.startswith(prefix)}
    if not whole:
        raise PaletteError(f"checkpoint {folder.parent}: its shards hold no {name} weights")
    load_shards(folder, {name: whole})
    return whole


def _first_failure(err) -> BaseException:
    """The exception of the first failed process out of DCP's CheckpointException (a BaseException holding them)."""
    failures = sorted(err.failures.items())
    return failures[0][1][0] if failures else RuntimeError(str(err))
