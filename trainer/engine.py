"""DeepSpeed engine set-up: config sections -> DeepSpeed JSON, optimizer groups, initialize."""
from __future__ import annotations

import deepspeed
import torch

from .schedules import build_schedule


def deepspeed_config(cfg, world_size: int) -> dict:
    """The DeepSpeed JSON for a run (batch sizes, ZeRO stage, precision, clipping)."""
    t, ds = cfg.trainer, cfg.deepspeed
    zero: dict = {"stage": ds.zero_stage, "reduce_bucket_size": ds.reduce_bucket_size}
    if ds.zero_stage >= 1 and ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    out = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "train_batch_size": t.micro_batch_size * t.grad_accum_steps * world_size,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision == "bf16"},
        "steps_per_print": 10**9,  # NeuroGraph logs progress itself
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:  # DeepSpeed's CPU Adam (compiled at first use)
        out["optimizer"] = {"type": "AdamW", "params": {"lr": t.lr, "betas": list(t.betas), "eps": t.eps,
                                                        "weight_decay": t.weight_decay}}
    return out


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, embeddings' 1-D params or params
    a model marks with `_no_weight_decay` (e.g. Mamba's A_log and D)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def initialize_engine(model: torch.nn.Module, cfg, world_size: int):
    """Wrap `model` in a DeepSpeed engine with AdamW and the configured schedule."""
    t = cfg.trainer
    ds_config = deepspeed_config(cfg, world_size)
    groups = parameter_groups(model, t.weight_decay)
    optimizer = None
    if "optimizer" not in ds_config:
        optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=groups if optimizer is None else None,
        optimizer=optimizer,
        lr_scheduler=lambda opt: build_schedule(opt, t),
        config=ds_config,
    )
    return engine, scheduler
