"""`neurograph train --init-from RUN[:STEP]`: a new run starting from another run's weights
(fine-tuning). Only the weights are taken: the optimizer, schedule, data position and step
start afresh. The weights are copied into the new run (`init_weights.safetensors`, named by
`trainer.init_weights` in its config.yaml), so the run records where it started from."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError, NeuroGraphConfig, read_yaml

INIT_WEIGHTS = "init_weights.safetensors"


def parse_source(source: str) -> tuple[Path, str]:
    """`RUN` or `RUN:STEP` -> (run directory, checkpoint: latest, a step or a tag)."""
    run, sep, which = source.rpartition(":")
    if not sep or "/" in which:  # no `:STEP` suffix
        return Path(source), "latest"
    return Path(run), which


def init_weights_from(cfg: NeuroGraphConfig, source: str) -> NeuroGraphConfig:
    """Copy the weights of `source` into `trainer.run_dir`, checked against `cfg.model`;
    returns `cfg` with `trainer.init_weights` naming the copy."""
    from safetensors.torch import save_file

    from neurograph.model import build_model
    from neurograph.trainer.checkpoint import CheckpointManager, weights_mismatch

    from .inference import consolidated_state_dict

    run, which = parse_source(source)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"--init-from {source}: {run} is not a training run directory (no config.yaml)")
    manager = CheckpointManager(run / "checkpoints")
    try:
        tag = manager.resolve(which)
    except FileNotFoundError as err:
        raise ConfigError(f"--init-from {source}: {err}") from None
    zero_stage = read_yaml(run / "config.yaml").get("deepspeed", {}).get("zero_stage", 2)
    state = consolidated_state_dict(manager.root, tag, zero_stage)
    with torch.device("meta"):
        model = build_model(cfg.model)
    params = dict(model.named_parameters())
    state = {k: v for k, v in state.items() if k in params}  # tied copies and buffers are the model's own
    wrong = weights_mismatch(model, state)
    if wrong:
        raise ConfigError(f"--init-from {source}: checkpoint {tag} does not fit this run's model section: "
                          + "; ".join(wrong[:5]) + (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else ""))
    path = Path(cfg.trainer.run_dir) / INIT_WEIGHTS
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path), metadata={"source": f"{run}:{tag}"})
    return cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"init_weights": str(path)})})
