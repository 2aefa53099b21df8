"""Process groups and model wrapping for data-parallel training under ``torchrun``.

``init_distributed`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); without it the run
is a single process. Two ways to spread a model: DDP (replicated weights, all-reduced gradients) and FSDP2
(``torch.distributed.fsdp.fully_shard`` on every block, then on the root: sharded weights, gradients and optimizer
state). NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from dla.train.model import block_modules


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs."""

    rank: int = 0  # global rank
    world_size: int = 1  # processes in the job
    local_rank: int = 0  # rank on this host (picks the GPU)
    device: torch.device = torch.device("cpu")  # this process's device
    owns_group: bool = False  # init_distributed created the process group (and destroy_distributed ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``.

    Raises:
        ValueError: ``cuda`` requested without a GPU.
    """
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("train.device: 'cuda' requested but no CUDA device is available; use auto or cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistEnv:
    """Join torchrun's process group when ``WORLD_SIZE > 1`` (NCCL on GPU, gloo on CPU), or run alone.

    A process group that already exists (the caller initialised it) is used as is and left alive.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return DistEnv(device=resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
        owns = True
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev,
                   owns_group=owns)


def destroy_distributed(env: DistEnv) -> None:
    """End the process group if ``init_distributed`` created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """In-place sum over ranks (identity in a single process); returns ``tensor``."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank if ``flag`` is true on any (so that all ranks take the same branch)."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_objects(obj, env: DistEnv) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def wrap_model(model: nn.Module, env: DistEnv, parallelism: str, param_dtype: Optional[torch.dtype] = None) \
        -> nn.Module:
    """Spread ``model`` over the ranks: ``ddp`` returns a ``DistributedDataParallel``; ``fsdp`` shards every block
    and the root in place (FSDP2) and returns ``model``. Unchanged in a single process.

    Args:
        param_dtype: FSDP only: dtype of the unsharded parameters in forward/backward (bfloat16 for mixed
            precision; gradients are reduced in float32); None = the parameters' own dtype.

    Raises:
        ValueError: ``fsdp`` on a model without blocks to shard (no ``_no_split_modules``).
    """
    if not env.distributed:
        return model.to(env.device)
    if parallelism == "ddp":
        model = model.to(env.device)
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    blocks = block_modules(model)
    if not blocks:
        raise ValueError(f"train.parallelism: fsdp needs the model's repeated blocks (_no_split_modules), "
                         f"{type(model).__name__} names none; use ddp")
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (FSDP2 shards in place: nothing to unwrap)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


__all__ = ["DistEnv", "init_distributed", "destroy_distributed", "resolve_device", "wrap_model", "unwrap",
           "all_reduce_sum", "any_rank", "all_gather_objects", "barrier"]
