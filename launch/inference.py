"""Load a trained model from a run directory: config + consolidated checkpoint + tokenizer."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from data_pipeline import load_tokenizer
from model import build_model
from trainer.checkpoint import CheckpointManager

from .config import load_config


def consolidated_state_dict(checkpoint_root: Path, tag: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a sharded DeepSpeed checkpoint (any ZeRO stage)."""
    if zero_stage == 0:
        states = torch.load(checkpoint_root / tag / "mp_rank_00_model_states.pt", weights_only=True)
        return {k: v.float() for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_root), tag=tag)


def load_trained_model(run_dir: str | Path, checkpoint: str = "latest", device: str = "cpu"):
    """(model in eval mode, tokenizer, config) of a run's checkpoint."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    manager = CheckpointManager(run_dir / "checkpoints")
    tag = manager.resolve(checkpoint)
    model = build_model(cfg.model)
    state = consolidated_state_dict(manager.root, tag, cfg.deepspeed.zero_stage)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in dict(model.named_buffers())]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {tag} does not fit the model: missing {missing}, unexpected {unexpected}")
    return model.to(device).eval(), load_tokenizer(cfg.data.path), cfg


def encode_prompt(tokenizer, prompt: str, device: Optional[str] = None) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
