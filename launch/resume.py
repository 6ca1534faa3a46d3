"""Which checkpoint `neurograph train --resume` continues, and whether this config may continue it.

Decided once, in the CLI, before any rank starts: the checkpoint must verify against its
manifest (`latest` falls back to the newest one that does), the `model` and `data` sections
must equal the saved ones unless `--allow-config-change`, and a checkpoint written with another
world size or ZeRO stage is converted (`neurograph.trainer.reshard`) only with `--reshard`.

Why explicitly: the conversion writes a second copy of the fp32 weights and both optimizer moments
(12 bytes per parameter) beside the checkpoint and takes minutes on large models, and the continued
run is no longer bit-identical to one on the old shape (per-rank dropout streams restart, reductions
change order). A changed shape is often an accident (a config default, a smaller allocation than
asked for): without the flag it is refused, naming both shapes. Elastic jobs pass `--reshard`
always; with an unchanged shape it converts nothing.
"""
from __future__ import annotations

import logging

from neurograph.trainer.checkpoint import CheckpointManager, read_manifest
from neurograph.trainer.reshard import to_universal
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
                   allow_config_change: bool, reshard: bool = False) -> str:
    """The verified tag to resume from, or with `reshard` the absolute path of its universal copy
    when this run's world size or ZeRO stage differs; ConfigError when it cannot or must not be
    continued."""
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
    if which != tag:
        log.info("resuming from checkpoint %s", checkpoints.root / tag)
    old_world, old_stage = saved["world_size"], saved["config"]["deepspeed"]["zero_stage"]
    new_world, new_stage = cfg.world_size, cfg.deepspeed.zero_stage
    if (old_world, old_stage) == (new_world, new_stage):
        return tag
    workers = "launcher.ray.num_workers" if cfg.launcher.kind == "ray" else "trainer.num_processes"
    written = (f"checkpoint {tag} was written by {old_world} processes with ZeRO stage {old_stage}, this run has "
               f"{new_world} with stage {new_stage}")
    if not reshard:
        raise ConfigError(f"--resume: {written}; pass --reshard to convert it for this run (the original is kept), "
                          f"or resume with {workers}={old_world} deepspeed.zero_stage={old_stage}")
    if 0 in (old_stage, new_stage):
        raise ConfigError(f"--reshard: {written}; resharding needs ZeRO stage 1, 2 or 3 on both sides (stage 0 "
                          "keeps torch's own optimizer state): use deepspeed.zero_stage=1, which holds the same state")
    try:
        universal = to_universal(checkpoints.root, tag)
    except Exception as err:  # the original stays as it was; a partial copy stays in .staging
        raise ConfigError(f"--reshard: converting checkpoint {tag} failed ({type(err).__name__}: {err})") from err
    log.warning("--reshard: %s; converted to a universal checkpoint (fp32 weights and AdamW moments per "
                "parameter, schedule, data position) at %s", written, universal)
    return str(universal.resolve())
