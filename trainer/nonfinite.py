"""Finite-or-stop: what a step whose loss or gradient norm is not finite does.

Every step all-reduces one flag with its loss (trainer.reduce_step), so all ranks agree.
`trainer.on_nonfinite`:
- `stop` (default): raise `NonFiniteError` before anything of that step is saved; the message
  names the step and the last good checkpoint, which retention keeps (it is pinned).
- `skip`: count and log the step and go on (DeepSpeed's ZeRO optimizers drop an update with
  non-finite gradients); if the weights themselves are no longer finite, stop as above.
- `rollback`: reload the newest checkpoint before the step that verifies and holds finite
  weights, and continue from it, skipping the offending step's batches.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.distributed as dist

from .checkpoint import CheckpointManager, step_of
from .collectives import rank_device

log = logging.getLogger("neurograph.trainer")


class NonFiniteError(RuntimeError):
    """Training stopped at a non-finite step; no checkpoint was written after it."""


def weights_finite(engine) -> bool:
    """Collective: whether every rank's model weights are all finite."""
    bad = torch.tensor([float(any(not torch.isfinite(p).all() for p in engine.module.parameters()))], device=rank_device())
    dist.all_reduce(bad)
    return bad.item() == 0


class NonFiniteGuard:
    """Applies `trainer.on_nonfinite` on every rank; counts the non-finite steps."""

    def __init__(self, policy: str, checkpoints: CheckpointManager, engine):
        self.policy = policy
        self.checkpoints = checkpoints
        self.engine = engine
        self.count = 0

    def handle(self, step: int, loss: float, grad_norm: Optional[float]) -> Optional[dict]:
        """Called on every rank at non-finite `step`. Returns None to go on (`skip`) or the
        client state of the checkpoint rolled back to (`rollback`); raises `NonFiniteError` (`stop`)."""
        self.count += 1
        earlier = [t for t in self.checkpoints.published() if step_of(t) < step]
        if dist.get_rank() == 0 and earlier:
            self.checkpoints.pin(earlier[-1])
        what = f"non-finite training step {step} (loss {loss:.4g}, grad norm {grad_norm})"
        if self.policy == "skip":
            if weights_finite(self.engine):
                if dist.get_rank() == 0:
                    log.warning("%s: update skipped (%d non-finite steps so far)", what, self.count)
                return None
            what += "; the weights are no longer finite, so it cannot be skipped (trainer.on_nonfinite=rollback)"
        elif self.policy == "rollback":
            target = self._rollback(step)
            if target is not None:
                tag, state = target
                if dist.get_rank() == 0:
                    log.warning("%s: rolled back to %s, skipping the batches of step %d (%d non-finite steps so "
                                "far)", what, tag, step, self.count)
                return state
            what += "; no earlier checkpoint to roll back to"
        raise NonFiniteError(f"{what}: training stopped without writing a checkpoint; last good checkpoint: "
                             f"{self.checkpoints.root / earlier[-1] if earlier else 'none'}")

    def _rollback(self, step: int) -> Optional[tuple[str, dict]]:
        """Load the newest verified checkpoint before `step` with finite weights, or None."""
        before = step
        while True:
            tag = [None]
            if dist.get_rank() == 0:  # one rank verifies (hashes every file), all load
                try:
                    tag[0] = self.checkpoints.resolve_verified("latest", before=before)
                except FileNotFoundError:
                    pass
            dist.broadcast_object_list(tag, src=0)
            if tag[0] is None:
                return None
            state = self.checkpoints.load(self.engine, tag[0])
            if weights_finite(self.engine):
                return tag[0], state
            if dist.get_rank() == 0:
                log.warning("checkpoint %s holds non-finite weights: rolling back further", tag[0])
            before = step_of(tag[0])
