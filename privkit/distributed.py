"""Distributed helpers: the same training loop under ``torchrun`` with DistributedDataParallel.

Nothing here is home-made distribution: processes are started by ``torchrun``, gradients are
averaged by :class:`torch.nn.parallel.DistributedDataParallel` (gloo on CPU, nccl on GPU). These
helpers only read the environment ``torchrun`` sets and make rank 0 the only writer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank and world size from ``torch.distributed`` if initialised, else from torchrun's env."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    except ImportError:  # pragma: no cover
        pass
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed() -> DistInfo:
    """Initialise the process group when started by ``torchrun`` with more than one process.

    Backend: gloo, because privkit's training loop keeps networks and batches on the CPU (nccl
    needs CUDA tensors); set ``PRIVKIT_DIST_BACKEND=nccl`` only for code that moves them to GPUs.
    A no-op for a single process.
    """
    import torch
    import torch.distributed as dist

    info = dist_info()
    if info.world_size > 1 and not dist.is_initialized():
        backend = os.environ.get("PRIVKIT_DIST_BACKEND", "gloo")
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
        info = dist_info()
    return info


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_main_process() -> bool:
    return dist_info().is_main


def default_device():
    import torch

    info = dist_info()
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")
