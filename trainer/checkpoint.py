"""Sharded DeepSpeed checkpoints, written to a staging name and published atomically.

Layout under `<run_dir>/checkpoints/`:
    step_00000100/      one published checkpoint (DeepSpeed shards + per-rank RNG states)
    latest              the tag of the newest published checkpoint
    .staging/           checkpoints being written; never read
A crash while saving leaves only a partial directory in `.staging/`; `latest` and every
published checkpoint stay intact.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


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


class CheckpointManager:
    """Saves and restores engine + client state (step, data position, tracking run) + RNG."""

    def __init__(self, root: str | Path, keep: int = 2):
        self.root = Path(root)
        self.staging = self.root / ".staging"
        self.keep = keep

    # ---- discovery -------------------------------------------------------------------
    def latest_tag(self) -> Optional[str]:
        marker = self.root / LATEST
        if not marker.is_file():
            return None
        tag = marker.read_text().strip()
        return tag if (self.root / tag).is_dir() else None

    def published(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step_"))

    def resolve(self, which: str) -> str:
        """`latest`, a tag (`step_00000100`) or a step number -> a published tag."""
        if which == LATEST:
            tag = self.latest_tag()
            if tag is None:
                raise FileNotFoundError(f"no published checkpoint under {self.root}")
            return tag
        tag = tag_for(int(which)) if which.isdigit() else which
        if not (self.root / tag).is_dir():
            raise FileNotFoundError(f"checkpoint {tag} not found under {self.root}; have: {self.published()}")
        return tag

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
        dist.barrier()
        if rank == 0:
            target = self.root / tag
            if target.exists():  # re-saving a step (e.g. after a resume): replace it
                shutil.rmtree(target)
            os.replace(self.staging / tag, target)
            _atomic_write(self.root / LATEST, tag)
            self._prune(keep_tag=tag)
        dist.barrier()
        return self.root / tag

    def load(self, engine, tag: str) -> dict:
        """Collective. Restores engine (model, optimizer, scheduler) and RNG; returns client state."""
        path, client_state = engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.root / tag}")
        rng_file = self.root / tag / f"rng_rank{dist.get_rank():05d}.pt"
        restore_rng(torch.load(rng_file, weights_only=True))
        return client_state

    def _prune(self, keep_tag: str) -> None:
        for tag in self.published()[: -self.keep]:
            if tag != keep_tag:
                shutil.rmtree(self.root / tag, ignore_errors=True)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
