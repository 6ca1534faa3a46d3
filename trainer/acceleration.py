"""Activation checkpointing and torch.compile, applied to any model family through its block list.

    trainer.activation_checkpointing: none | layers | every_k  ->  torch.utils.checkpoint (non-reentrant)
                                      selective                ->  the same, on the modules the family names
    trainer.compile: true                                       ->  torch.compile of each block, in place

Both act on the blocks each model family names (`repeated_blocks()`; `selective_checkpointing()` for the parts of
blocks that are cheap to recompute and costly to keep) and leave parameter names unchanged, so
checkpoints, exports and inference load the same weights. Dropout masks are replayed in the
recomputation (the RNG state is preserved), so a checkpointed run computes the losses of a
plain one. INN's own `model.checkpoint_layers` is the same as `layers`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

def block_list(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks, in forward order: what its family names (`repeated_blocks()`)."""
    if not hasattr(model, "repeated_blocks"):
        raise ValueError(f"{type(model).__name__} does not name its blocks (a model family defines repeated_blocks())")
    return model.repeated_blocks()


def checkpointing_mode(trainer_cfg, model_cfg) -> tuple[str, int]:
    """(mode, k) in effect: trainer.activation_checkpointing, or `layers` for INN's checkpoint_layers."""
    mode, every = trainer_cfg.activation_checkpointing, trainer_cfg.activation_checkpointing_every
    if getattr(model_cfg, "checkpoint_layers", False):
        if mode != "none":
            raise ValueError("model.checkpoint_layers and trainer.activation_checkpointing are both set; "
                             "keep trainer.activation_checkpointing only")
        return "layers", 1
    return mode, every


def supports_selective(model_cls: type) -> bool:
    """Whether a model family names what `selective` recomputes."""
    return hasattr(model_cls, "selective_checkpointing")


def checkpoint_blocks(model: nn.Module, mode: str, every: int = 1) -> float:
    """Recompute in backward the forward of every block (`layers`), of every k-th (`every_k`, blocks 0, k, 2k, ...)
    or of the modules the family names (`selective`). Returns the number of blocks whose forward is recomputed
    (for `selective`: the blocks times the share of a block's forward FLOPs those modules hold)."""
    if mode == "none":
        return 0
    if mode == "selective":
        if not supports_selective(type(model)):
            raise ValueError(f"trainer.activation_checkpointing=selective: {type(model).__name__} names no modules to "
                             "recompute (a family defines selective_checkpointing()); use none, layers or every_k")
        chosen, share = model.selective_checkpointing()
    else:
        chosen = [b for i, b in enumerate(block_list(model)) if mode == "layers" or i % every == 0]
        share = 1.0
    for module in chosen:
        _checkpoint_forward(module)
    return len(chosen) * share


def _checkpoint_forward(block: nn.Module) -> None:
    """Replace the module's forward (an instance attribute: parameter names and hooks stay)."""
    forward = block.forward

    def checkpointed(*args, **kwargs):
        if not (block.training and torch.is_grad_enabled()):
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    block.forward = checkpointed


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each block in place (nn.Module.compile keeps names and state dict keys)."""
    try:
        blocks = block_list(model)
    except ValueError:
        blocks = [model]
    for block in blocks:
        block.compile()


def accelerate(model: nn.Module, trainer_cfg, model_cfg) -> float:
    """Apply the trainer's checkpointing and compile switches to `model`; returns the share of the
    blocks' forward that is recomputed (for train/hfu)."""
    mode, every = checkpointing_mode(trainer_cfg, model_cfg)
    n = len(block_list(model)) if mode != "none" else 0
    # INN recomputes its layers itself when checkpoint_layers is set
    done = n if getattr(model_cfg, "checkpoint_layers", False) else checkpoint_blocks(model, mode, every)
    if trainer_cfg.compile:
        compile_blocks(model)
    return done / n if n else 0.0

