"""Data-parallel training from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT): gloo on CPU, NCCL on GPU. Only rank 0 writes files."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fcnseg.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """What torchrun's environment variables say (world size 1 without them)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup_distributed(device: torch.device) -> DistInfo:
    """Initialises the default process group when launched by torchrun (no-op otherwise).

    On GPU each process uses ``cuda:LOCAL_RANK``; on CPU the cores are shared out so the
    processes do not oversubscribe them."""
    info = env_dist_info()
    if not info.enabled:
        return info
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            gpus = torch.cuda.device_count()
            if info.local_rank >= gpus:
                local = os.environ.get("LOCAL_WORLD_SIZE", "?")
                raise ConfigError(
                    f"process {info.local_rank} of {local} on this node trains on cuda:{info.local_rank}, but "
                    f"{gpus} GPU(s) are visible; launch torchrun --nproc_per_node={gpus} (one process per "
                    "GPU), or train on the CPU with --device cpu"
                )
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))
    return info


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """``cuda`` → ``cuda:LOCAL_RANK`` under DDP; other devices unchanged."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def any_rank(info: DistInfo, device: torch.device, flag: bool) -> bool:
    """True on every rank when it is on one (every rank must stop or switch at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device if device.type == "cuda" else "cpu")
    return bool(all_reduce_sum(t).item())
