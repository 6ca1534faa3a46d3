"""Sharded DeepSpeed checkpoints, written to a staging name, sealed with a manifest and
published atomically.

Layout under `<run_dir>/checkpoints/`:
    step_00000100/      one published checkpoint: DeepSpeed shards, per-rank RNG states,
                        model.safetensors (full weights) and manifest.json (sha256 of every
                        file, step, world size, resolved config, the launch that wrote it)
    latest              the tag of the newest published checkpoint (rebuilt if missing)
    pinned              tags retention never deletes (the last one before a non-finite step)
    universal/step_.../ a checkpoint converted for another world size or ZeRO stage (`reshard.py`),
                        deleted with its original
    .staging/           checkpoints being written; never read
A crash while saving leaves only a partial directory in `.staging/`; `latest` and every
published checkpoint stay intact. Nothing is unpickled without restriction: DeepSpeed's files
are read through a `WeightsOnlyCheckpointEngine` (torch.load(weights_only=True) with a few
allow-listed DeepSpeed classes), whether the checkpoint was written here or downloaded.
DeepSpeed is imported on first use: the launcher and the CLI tools import this module too.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"
PINNED = "pinned"
UNIVERSAL = "universal"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
TAG_PATTERN = re.compile(r"step_\d+")

log = logging.getLogger("neurograph.checkpoint")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def is_tag(name: str) -> bool:
    return TAG_PATTERN.fullmatch(name) is not None


def capture_rng() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- restricted loading ------------------------------------------------------------------
def deepspeed_safe_globals() -> list:
    """The only classes (besides tensors and containers) a DeepSpeed ZeRO checkpoint pickles."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, map_location=None, mmap: bool = False):
    """torch.load with the restricted unpickler: tensors, containers and the allow-list only."""
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


@contextlib.contextmanager
def restricted_torch_load():
    """Within this block every `torch.load` is `safe_load`'s: DeepSpeed's universal-checkpoint code
    (converter and loader) calls torch.load(weights_only=False) itself."""
    original = torch.load

    def load(f, map_location=None, weights_only=None, **kwargs):
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            return original(f, map_location=map_location, weights_only=True, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


@functools.cache
def weights_only_engine_class() -> type:
    """`WeightsOnlyCheckpointEngine`: DeepSpeed's torch checkpoint engine, loading through
    `safe_load` instead of pickle."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return safe_load(path, map_location=map_location)

    return WeightsOnlyCheckpointEngine


# ---- manifest ----------------------------------------------------------------------------
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, **meta) -> None:
    """Seal a checkpoint directory: sha256 of every file + `meta` (step, world_size, config)."""
    files = {p.relative_to(directory).as_posix(): sha256(p) for p in sorted(directory.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    _atomic_write(directory / MANIFEST, json.dumps({**meta, "files": files}, indent=1))


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


def check_checkpoint(directory: Path) -> Optional[str]:
    """Why the checkpoint in `directory` cannot be trusted, or None: every file listed in its
    manifest, none missing, none extra, each matching its sha256, each `.pt` file loadable by
    the restricted unpickler."""
    try:
        files = read_manifest(directory)["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (an incomplete checkpoint, or one written before checksums)"
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()} - {MANIFEST}
    if not isinstance(files, dict) or any(".." in Path(n).parts or Path(n).is_absolute() for n in files):
        return f"{MANIFEST} lists invalid file names"
    if present - set(files):
        return f"{sorted(present - set(files))[0]} is not listed in {MANIFEST}"
    for name, digest in files.items():
        if name not in present:
            return f"{name} is missing"
        if sha256(directory / name) != digest:
            return f"{name} does not match its sha256 (truncated or modified)"
    for name in sorted(n for n in files if n.endswith(".pt")):
        try:
            safe_load(directory / name, map_location="cpu", mmap=True)
        except Exception as err:  # an unsafe pickle, or not a torch file at all
            return f"{name} cannot be loaded safely ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    return None


class CheckpointManager:
    """Saves and restores engine + client state (step, data position, tracking run) + RNG."""

    def __init__(self, root: str | Path, keep: int = 2, meta: Optional[dict] = None):
        """`meta`: written into every manifest (the resolved config, world size)."""
        self.root = Path(root)
        self.staging = self.root / ".staging"
        self.keep = keep
        self.meta = meta or {}

    # ---- discovery -------------------------------------------------------------------
    def latest_tag(self) -> Optional[str]:
        """The `latest` pointer; a missing or dangling one is rebuilt from the directory."""
        marker = self.root / LATEST
        tag = marker.read_text().strip() if marker.is_file() else None
        if tag is not None and is_tag(tag) and (self.root / tag).is_dir():
            return tag
        published = self.published()
        if not published:
            return None
        log.warning("checkpoint pointer %s %s: rebuilt from the directory as %s", marker,
                    "is missing" if tag is None else f"names {tag!r}, which is not there", published[-1])
        _atomic_write(marker, published[-1])
        return published[-1]

    def published(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_tag(p.name))

    def resolve(self, which: str) -> str:
        """`latest`, a tag (`step_00000100`) or a step number -> a published tag (unverified)."""
        if which == LATEST:
            tag = self.latest_tag()
            if tag is None:
                raise FileNotFoundError(f"no published checkpoint under {self.root}")
            return tag
        tag = tag_for(int(which)) if which.isdigit() else which
        if not is_tag(tag) or not (self.root / tag).is_dir():
            raise FileNotFoundError(f"checkpoint {tag} not found under {self.root}; have: {self.published()}")
        return tag

    def resolve_verified(self, which: str, before: Optional[int] = None, launch_id: Optional[str] = None) -> str:
        """Like `resolve`, but the checkpoint must pass `check_checkpoint`. `latest` falls back
        to the newest one that does (if given, only those before step `before`, only those written
        by launch `launch_id`), logging each one skipped and why; an explicit tag that fails raises."""
        if which != LATEST:
            tag = self.resolve(which)
            problem = check_checkpoint(self.root / tag)
            if problem:
                raise ValueError(f"checkpoint {self.root / tag} is not usable: {problem}")
            return tag
        self.latest_tag()  # rebuild a missing pointer
        candidates = [t for t in reversed(self.published()) if (before is None or step_of(t) < before)
                      and (launch_id is None or self.launch_of(t) == launch_id)]
        for tag in candidates:
            problem = check_checkpoint(self.root / tag)
            if problem is None:
                return tag
            log.warning("skipping checkpoint %s: %s", self.root / tag, problem)
        skipped = " (all skipped above)" if candidates else ""
        raise FileNotFoundError(f"no usable checkpoint under {self.root}{skipped}")

    def launch_of(self, tag: str) -> Optional[str]:
        """The launch that wrote checkpoint `tag` (`launch_id` in its manifest); None if unknown."""
        try:
            return read_manifest(self.root / tag).get("launch_id")
        except (OSError, ValueError, AttributeError):  # no manifest, or not a JSON object
            return None

    # ---- save / load -----------------------------------------------------------------
    def save(self, engine, step: int, client_state: dict) -> Path:
        """Collective: every rank calls it. Returns the published directory."""
        tag = tag_for(step)
        rank = dist.get_rank()
        if rank == 0:
            shutil.rmtree(self.staging / tag, ignore_errors=True)  # leftovers of a crash
            self.staging.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        engine.save_checkpoint(str(self.staging), tag=tag, client_state=client_state, save_latest=False)
        torch.save(capture_rng(), self.staging / tag / f"rng_rank{rank:05d}.pt")
        weights = full_weights(engine)
        dist.barrier()
        if rank == 0:
            from safetensors.torch import save_file

            save_file(weights, str(self.staging / tag / WEIGHTS))
            write_manifest(self.staging / tag, step=step, world_size=dist.get_world_size(), **self.meta)
            target = self.root / tag
            if target.exists():  # re-saving a step (e.g. after a resume): replace it
                shutil.rmtree(target)
            os.replace(self.staging / tag, target)
            _atomic_write(self.root / LATEST, tag)
            self._prune(keep_tag=tag)
        dist.barrier()
        return self.root / tag

    def load(self, engine, tag: str) -> dict:
        """Collective. Restores engine (model, optimizer, scheduler) and RNG through the
        restricted unpickler; returns client state."""
        engine_class = weights_only_engine_class()
        if not isinstance(engine.checkpoint_engine, engine_class):
            engine.checkpoint_engine = engine_class(engine._config)
        path, client_state = engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.root / tag}")
        restore_rng(safe_load(self.root / tag / f"rng_rank{dist.get_rank():05d}.pt"))
        return client_state

    # ---- retention -------------------------------------------------------------------
    def pin(self, tag: str) -> None:
        """Never prune `tag` (rank 0): the newest checkpoint written before a non-finite step."""
        if tag not in self.pinned():
            _atomic_write(self.root / PINNED, "\n".join([*self.pinned(), tag]))

    def pinned(self) -> list[str]:
        path = self.root / PINNED
        return path.read_text().split() if path.is_file() else []

    def _prune(self, keep_tag: str) -> None:
        keep = {keep_tag, *self.pinned()}
        for tag in self.published()[: -self.keep]:
            if tag not in keep:
                shutil.rmtree(self.root / tag, ignore_errors=True)
                shutil.rmtree(self.root / UNIVERSAL / tag, ignore_errors=True)


def step_of(tag: str) -> int:
    return int(tag.split("_", 1)[1])


def full_weights(engine) -> dict[str, torch.Tensor]:
    """Collective. The model's full weights on rank 0, parameters as the optimizer's fp32 master
    copies (in bf16 runs the module holds only a rounded copy; ZeRO-3 gathers them), buffers as the
    module holds them; own copies (safetensors refuses shared storage, e.g. tied embeddings);
    empty elsewhere."""
    from deepspeed.utils import safe_get_full_fp32_param

    masters = {id(p): safe_get_full_fp32_param(p) for p in engine.module.parameters() if p.requires_grad}
    if dist.get_rank() != 0:
        return {}
    state = {}
    for name, value in engine.module.state_dict(keep_vars=True).items():  # a tied weight under each name
        if id(value) not in masters:  # a buffer
            state[name] = value
        else:  # stage 0 in fp32 keeps no master copy (None): the parameter is its own master
            state[name] = value.float() if masters[id(value)] is None else masters[id(value)]
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def weights_mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Why `state` cannot be a model's weights: each parameter missing or of another shape, each
    key the model does not have (buffers are the model's own and may be absent); [] if it fits."""
    params = {k: tuple(p.shape) for k, p in model.named_parameters()}
    wrong = [f"{k} {tuple(state[k].shape) if k in state else 'missing'} (model: {shape})"
             for k, shape in params.items() if k not in state or tuple(state[k].shape) != shape]
    known = model.state_dict().keys()
    return sorted(wrong) + sorted(f"{k} (not in the model)" for k in state if k not in known)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
