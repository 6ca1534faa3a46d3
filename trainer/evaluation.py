"""The language-modelling loss of a training step and the validation pass (also `neurograph eval`'s)."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from neurograph.data_pipeline import IGNORE_INDEX, StreamingTokenLoader

from .collectives import rank_device


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))



def training_loss(engine, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(LM loss, loss to optimize): models may add an auxiliary term through `aux_loss()`
    (e.g. INL's convergence penalty that makes adaptive stopping pay off)."""
    loss = lm_loss(engine(batch[:, :-1]), batch[:, 1:])
    aux = getattr(engine.module, "aux_loss", None)
    return loss, (loss + aux() if aux is not None else loss)



@torch.no_grad()
def evaluate(engine, loader: StreamingTokenLoader, char_level: bool) -> dict[str, float]:
    """Mean validation loss per token over one pass of `loader`: every rank runs the same number
    of batches, and the padding rows that even out the last one (IGNORE_INDEX) count for nothing."""
    engine.eval()
    total = torch.zeros(2, dtype=torch.float64, device=rank_device())
    for batch in loader:
        batch = batch.to(total.device, non_blocking=True)
        targets = batch[:, 1:]
        logits = engine(batch[:, :-1].clamp(min=0))  # padding rows run as token 0, their targets are ignored
        loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        total += torch.stack([loss_sum.double(), (targets != IGNORE_INDEX).sum().double()])
    engine.train()
    dist.all_reduce(total)
    loss = (total[0] / total[1].clamp(min=1)).item()
    out = {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}
    if char_level:
        out["val/bpc"] = loss / math.log(2)
    return out
