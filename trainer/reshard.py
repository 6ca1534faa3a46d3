"""Resharding: a checkpoint written by N ranks at ZeRO stage S, continued by M ranks at stage T.

DeepSpeed's sharded files only load into the layout that wrote them. `to_universal` converts a
published checkpoint into DeepSpeed's *universal* checkpoint (`ds_to_universal`): per parameter,
by name, the full fp32 master weight and both AdamW moments (`zero/<name>/{fp32, exp_avg,
exp_avg_sq, step}.pt`), plus the step, the schedule and the client state (data position, MLflow
run id) of the original. Every rank of the new layout then takes its own partition of each
(`CheckpointManager.load` with DeepSpeed's `load_universal`). The global sample order goes on
from the saved data position whatever the world size (the loader's stream is world-size
invariant); per-rank RNG streams (dropout) restart from the seed, since ranks no longer
correspond.

The converted copy is written under `checkpoints/.staging/`, made loadable by any stage 1-3
(`_loadable_by_any_stage`: DeepSpeed's converter writes what the source stage's own loader
expects), sealed with a manifest, verified and published atomically as
`checkpoints/universal/<tag>` beside the original, which is kept. ZeRO stage 0 is not
convertible (its fp32 optimizer state is torch's own, not DeepSpeed's): use stage 1 instead,
which on one rank holds the same state.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
from pathlib import Path

import torch

from .checkpoint import MANIFEST, UNIVERSAL, check_checkpoint, read_manifest, restricted_torch_load, write_manifest

FORMAT = "deepspeed-universal"  # manifest["format"] of a converted copy
_MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")  # stages 1-2, 3
_STATE_KEYS = ("fp32", "exp_avg", "exp_avg_sq")

log = logging.getLogger("neurograph.checkpoint")


def is_universal(directory: Path) -> bool:
    return (directory / MANIFEST).is_file() and read_manifest(directory).get("format") == FORMAT


def to_universal(checkpoints_root: Path, tag: str) -> Path:
    """The universal copy of verified checkpoint `checkpoints_root/tag`, converted and published
    (or an earlier conversion that still verifies); returns its directory."""
    target = checkpoints_root / UNIVERSAL / tag
    if target.is_dir() and check_checkpoint(target) is None and is_universal(target):
        log.info("using the converted checkpoint %s", target)
        return target
    source = checkpoints_root / tag
    staging = checkpoints_root / ".staging" / UNIVERSAL / tag
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of a crash
    staging.parent.mkdir(parents=True, exist_ok=True)
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    args = argparse.Namespace(input_folder=str(source), output_folder=str(staging), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    chatter = io.StringIO()  # the converter prints its progress
    with restricted_torch_load(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        ds_to_universal(args)
    (staging.parent / "latest_universal").unlink(missing_ok=True)  # the converter's pointer; ours is the path
    _loadable_by_any_stage(staging)
    meta = {k: v for k, v in read_manifest(source).items() if k != "files"}
    write_manifest(staging, **meta, format=FORMAT, converted_from=tag)
    problem = check_checkpoint(staging)
    if problem is not None:
        raise RuntimeError(f"the universal copy of {source} does not verify: {problem}")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(exist_ok=True)
    os.replace(staging, target)
    return target


def _loadable_by_any_stage(directory: Path) -> None:
    """DeepSpeed's converter writes what the source stage's loader reads; the other stages' loaders
    need the model states under their own file name, each state as {"param": tensor}, a `step` per
    parameter, and both the ZeRO-1/2 and the ZeRO-3 form of the optimizer's global state."""
    from deepspeed import __version__ as ds_version

    present = [name for name in _MODEL_STATES if (directory / name).is_file()]
    for name in _MODEL_STATES:
        if name not in present:
            shutil.copyfile(directory / present[0], directory / name)
    optim_path = directory / "zero" / "optimizer_state.pt"
    with restricted_torch_load():
        optim = torch.load(optim_path)
        zero3_form = optim.get("optimizer_state_dict")
        step = zero3_form["state"][0]["step"] if zero3_form else None
        for param_dir in sorted(p for p in (directory / "zero").iterdir() if p.is_dir()):
            for key in _STATE_KEYS:
                state = torch.load(param_dir / f"{key}.pt")
                if not isinstance(state, dict):
                    torch.save({"param": state.detach()}, param_dir / f"{key}.pt")
            if (param_dir / "step.pt").is_file():
                step = torch.load(param_dir / "step.pt")
            else:
                torch.save(step, param_dir / "step.pt")
    optim["optimizer_state_dict"] = {"state": {0: {"step": step}}, "param_groups": optim["param_groups"]}
    optim.pop("fp32_flat_groups", None)  # ZeRO-3's rank-0 partition: the per-parameter files hold it all
    optim.setdefault("ds_version", ds_version)
    torch.save(optim, optim_path)


def load_universal(engine, directory: Path) -> dict:
    """Collective. Load the universal copy `directory` into this engine's layout (weights, optimizer
    moments, schedule; each rank its own partition); returns the client state."""
    weight_decay = [group["weight_decay"] for group in engine.optimizer.param_groups]
    engine._config.load_universal_checkpoint = True
    try:
        with restricted_torch_load():
            path, client_state = engine.load_checkpoint(str(directory.parent), tag=directory.name,
                                                        load_optimizer_states=True, load_lr_scheduler_states=True)
    finally:
        engine._config.load_universal_checkpoint = False
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the universal checkpoint {directory}")
    # ZeRO-3's loader gives every parameter group the first one's hyperparameters and one shared `step`
    # tensor, which torch's AdamW would then advance once per group
    for group, decay in zip(engine.optimizer.param_groups, weight_decay):
        group["weight_decay"] = decay
    for state in engine.optimizer.optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
    return client_state
