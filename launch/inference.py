"""Load a trained model from a run directory: config + consolidated checkpoint + tokenizer."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from neurograph.data_pipeline import CharTokenizer, DataError, load_tokenizer
from neurograph.model import build_model
from neurograph.trainer.checkpoint import WEIGHTS, CheckpointManager

from .config import ConfigError, NeuroGraphConfig, read_yaml, validate_config


def consolidated_state_dict(checkpoint_root: Path, tag: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a checkpoint: its model.safetensors (the weights the model ran with),
    else (older checkpoints) consolidated from the DeepSpeed shards (any ZeRO stage)."""
    if (checkpoint_root / tag / WEIGHTS).is_file():
        from safetensors.torch import load_file

        return {k: v.float() for k, v in load_file(checkpoint_root / tag / WEIGHTS).items()}
    if zero_stage == 0:
        states = torch.load(checkpoint_root / tag / "mp_rank_00_model_states.pt", weights_only=True)
        return {k: v.float() for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_root), tag=tag)


def load_trained_model(run_dir: str | Path, checkpoint: str = "latest", device: str = "cpu"):
    """(model in eval mode, tokenizer, config) of a run's checkpoint."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    manager = CheckpointManager(run_dir / "checkpoints")
    tag = manager.resolve(checkpoint)
    model = build_model(cfg.model)
    state = consolidated_state_dict(manager.root, tag, cfg.deepspeed.zero_stage)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in dict(model.named_buffers())]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {tag} does not fit the model: missing {missing}, unexpected {unexpected}")
    return model.to(device).eval(), load_tokenizer(cfg.data.path), cfg


def load_run_config(run_dir: Path) -> NeuroGraphConfig:
    """A run's config.yaml, wherever the command runs: a relative `data.path` (a run made
    portable by hand, or moved with its data) is taken relative to the run directory."""
    raw = read_yaml(run_dir / "config.yaml")
    path = raw.get("data", {}).get("path")
    if path and "://" not in path and not Path(path).is_absolute():
        raw["data"]["path"] = str((run_dir / path).resolve())
    return validate_config(raw)


def encode_prompt(tokenizer, prompt: str, device: Optional[str] = None) -> torch.Tensor:
    """[1, T] token ids of `prompt`. Characters a character vocabulary lacks are named: read as its
    UNK token (a warning), or a ConfigError when it has none (data prepared before UNK existed)."""
    try:
        ids = tokenizer.encode(prompt)
    except DataError as err:
        raise ConfigError(f"--prompt: {err}") from None
    unknown = tokenizer.unknown_chars(prompt) if isinstance(tokenizer, CharTokenizer) else []
    if unknown:
        logging.getLogger("neurograph.launch").warning("--prompt: %s not in the vocabulary, read as %s", unknown,
                                                       tokenizer.roles["unk"])
    return torch.tensor([ids], dtype=torch.long, device=device)


def load_run(run: str, checkpoint: str):
    """(model, tokenizer) of a run's checkpoint; one-line errors for a wrong --run or --checkpoint."""
    if not (Path(run) / "config.yaml").is_file():
        raise ConfigError(f"--run {run}: not a training run directory (no config.yaml)")
    try:
        model, tokenizer, _ = load_trained_model(run, checkpoint)
    except FileNotFoundError as err:
        raise ConfigError(f"--checkpoint {checkpoint}: {err}") from None
    return model, tokenizer


def add_run_options(parser, run_help: str = "run directory (trainer.run_dir)") -> None:
    """--run and --checkpoint, as every command that reads a trained run takes them (see `load_run`)."""
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help=run_help)
    parser.add_argument("--checkpoint", default="latest", help="latest, a step number or a tag")
