"""Learning-rate schedules, as functions of the optimizer step (multipliers of the peak lr)."""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_schedule(optimizer: Optimizer, trainer_cfg) -> LRScheduler:
    """The schedule named by `trainer.schedule`, stepped once per optimizer step."""
    c = trainer_cfg
    if c.schedule == "onecycle":
        # Like the INN paper: cosine annealing, max lr = trainer.lr, beta1 cycled as torch does.
        return OneCycleLR(optimizer, max_lr=c.lr, total_steps=c.max_steps, pct_start=c.pct_start,
                          anneal_strategy="cos")
    if c.schedule == "cosine":
        return LambdaLR(optimizer, lambda s: warmup_cosine(s, c.warmup_steps, c.max_steps, c.min_lr_ratio))
    return LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / c.warmup_steps) if c.warmup_steps else 1.0)
