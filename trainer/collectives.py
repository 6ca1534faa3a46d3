"""Where this rank's tensors live: its CUDA device under NCCL, else the CPU (gloo). Batches are
moved there before the forward, and every tensor a collective reduces is made there."""
from __future__ import annotations

import torch
import torch.distributed as dist


def rank_device() -> torch.device:
    """The current CUDA device when the process group runs NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
