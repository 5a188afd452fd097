"""torchrun integration: which rank this process is, and which device it uses."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass
class Rank:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device_kind: str) -> Rank:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; gloo on CPU, NCCL on GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Rank()
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(choice: str, rank: Rank) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device")
        torch.cuda.set_device(rank.local)
        return torch.device("cuda", rank.local)
    return torch.device(choice)
