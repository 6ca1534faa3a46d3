"""Which checkpoint `neurograph train --resume` continues, and whether this config may continue it.

Decided once, in the CLI, before any rank starts: the checkpoint must verify against its
manifest (`latest` falls back to the newest one that does), the `model` and `data` sections
must equal the saved ones unless `--allow-config-change`, and the world size and ZeRO stage
must be those it was written with (resharding is refused, saying how to resume instead).
"""
from __future__ import annotations

import logging

from neurograph.trainer.checkpoint import WEIGHTS, CheckpointManager, read_manifest
from neurograph.trainer.tracking import flatten_params

from .config import ConfigError, NeuroGraphConfig

log = logging.getLogger("neurograph")

GUARDED_SECTIONS = ("model", "data")


def config_changes(saved: dict, new: dict, sections=GUARDED_SECTIONS) -> list[str]:
    """Dotted keys of `sections` whose values differ (or exist on one side only)."""
    old_flat, new_flat = (flatten_params({s: tree.get(s, {}) for s in sections}) for tree in (saved, new))
    return sorted(k for k in old_flat.keys() | new_flat.keys()
                  if old_flat.get(k, "<unset>") != new_flat.get(k, "<unset>"))


def checked_resume(cfg: NeuroGraphConfig, checkpoints: CheckpointManager, which: str,
                   allow_config_change: bool) -> str:
    """The verified tag to resume from; ConfigError when it cannot or must not be continued."""
    try:
        tag = checkpoints.resolve_verified(which)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"--resume {which}: {err}") from None
    saved = read_manifest(checkpoints.root / tag)
    if "config" not in saved:
        raise ConfigError(f"--resume: checkpoint {checkpoints.root / tag} holds no saved config to compare with")
    new = cfg.model_dump(mode="json")
    changed = config_changes(saved["config"], new)
    if changed and not allow_config_change:
        raise ConfigError(f"--resume: the config differs from checkpoint {tag}'s in {', '.join(changed)}; "
                          "undo the change, or pass --allow-config-change if it is deliberate")
    if changed:
        log.warning("resuming %s with changed %s (--allow-config-change)", tag, ", ".join(changed))
    old_world, old_stage = saved["world_size"], saved["config"]["deepspeed"]["zero_stage"]
    if (old_world, old_stage) != (cfg.world_size, cfg.deepspeed.zero_stage):
        workers = "launcher.ray.num_workers" if cfg.launcher.kind == "ray" else "trainer.num_processes"
        raise ConfigError(f"--resume: checkpoint {tag} was written by {old_world} processes with ZeRO stage "
                          f"{old_stage}, this run has {cfg.world_size} with stage {cfg.deepspeed.zero_stage}; "
                          f"resharding is not supported: resume with {workers}={old_world} "
                          f"deepspeed.zero_stage={old_stage}, or start a new run from its weights "
                          f"({checkpoints.root / tag / WEIGHTS})")
    if which != tag:
        log.info("resuming from checkpoint %s", checkpoints.root / tag)
    return tag
