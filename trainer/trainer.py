"""The training recipe, run by every data-parallel rank on a DeepSpeed engine.

    Trainer(cfg).fit():  set up (model, engine, data, checkpoints, tracking; resume) ->
        for each step: train_step -> log -> maybe_evaluate -> record -> maybe_checkpoint -> finish

A step's only collective of its own is one all-reduce that carries the loss, the non-finite flag and
the stop request together (`reduce_step`); what a non-finite step does is `NonFiniteGuard`'s policy,
how a signalled run stops is `GracefulStop`'s, where records go is `MetricsFile` and `MLflowTracker`.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import random
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from neurograph.data_pipeline import StreamingTokenLoader
from neurograph.kernels.cpu_extension import clear_stale_build_locks
from neurograph.model import build_model

from .acceleration import accelerate
from .checkpoint import CheckpointManager, weights_mismatch
from .collectives import rank_device
from .engine import initialize_engine
from .evaluation import evaluate, training_loss
from .metrics_file import MetricsFile
from .mfu import Utilization
from .nonfinite import NonFiniteError, NonFiniteGuard
from .preemption import STOP_SIGNALS, GracefulStop, Stopped
from .progress import Throughput, progress_line
from .reshard import is_universal, load_universal
from .tracking import MLflowTracker, flatten_params

log = logging.getLogger("neurograph.trainer")


def setup_distributed() -> tuple[int, int]:
    """Join the process group (gloo on CPU, NCCL on GPU) set up by the launcher's env vars."""
    import deepspeed

    # On CPU DeepSpeed's communication backend JIT-builds its shared-memory all-reduce (~34 s before the first step
    # of a new machine, then a ninja check per rank) for `inference_all_reduce` alone: training's collectives go
    # through torch.distributed. Not built here.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # (deepspeed.comm.torch is torch)
    clear_stale_build_locks()  # a killed build of our C++ kernels would otherwise leave its lock behind
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class StepOutcome:
    """What every rank agrees on after a step."""
    loss: float        # averaged over ranks
    finite: bool       # the loss and the gradient norm are finite on every rank
    stop_signal: int   # the signal some rank was asked to stop with, else 0


def reduce_step(loss: torch.Tensor, grad_norm: Optional[float], stop_signal: int) -> StepOutcome:
    """One all-reduce of [loss, non-finite flag, one stop flag per STOP_SIGNALS], then one read of it."""
    bad = float(grad_norm is not None and not math.isfinite(grad_norm))
    flags = [bad] + [float(stop_signal == s) for s in STOP_SIGNALS]
    summary = torch.cat([loss.detach().float().reshape(1),
                         torch.tensor(flags, device=loss.device)])
    summary[1] += (~torch.isfinite(summary[0])).float()
    dist.all_reduce(summary)
    total, nonfinite, *stops = summary.tolist()
    stop = next((int(s) for s, n in zip(STOP_SIGNALS, stops) if n), 0)
    return StepOutcome(total / dist.get_world_size(), nonfinite == 0, stop)


class Trainer:
    """One rank's training run of a validated `NeuroGraphConfig`.

    `resume`: None for a new run, else `latest`, a step number or a checkpoint tag of
    `trainer.run_dir`, or the absolute path of a checkpoint directory elsewhere (e.g. the universal
    copy `--reshard` converted).
    `on_checkpoint(step, path, record)`: called on every rank after a checkpoint is published
    (a launcher hands it to its cluster manager).
    `launch_id`: names one launch whose workers may be restarted; the restarted rank 0 continues
    the MLflow run tagged with it, and every checkpoint's manifest records it (the restarted
    workers resume from their launch's newest checkpoint)."""

    def __init__(self, cfg, resume: Optional[str] = None,
                 on_checkpoint: Optional[Callable[[int, Path, dict], None]] = None, launch_id: Optional[str] = None):
        self.cfg, self.t, self.on_checkpoint = cfg, cfg.trainer, on_checkpoint
        self.rank, self.world = setup_distributed()
        self.device = rank_device()  # batches go there; DeepSpeed puts the model there
        self.run_dir = Path(self.t.run_dir)
        self.stop = GracefulStop(self.run_dir, self.t.preemption_grace_s).install()
        self._build(resume, launch_id)
        self.step, run_id = 0, None
        if resume is not None:
            run_id = self._resume(resume)
        self.tracker = self._start_tracking(run_id, launch_id)
        self.metrics = MetricsFile(self.run_dir, self.step, writer=self.rank == 0)
        tokens_per_step = self.t.micro_batch_size * self.t.grad_accum_steps * self.world * cfg.data.seq_len
        self.flops_per_token = getattr(self.model, "flops_per_token", lambda _: None)(cfg.data.seq_len)
        self.utilization = (Utilization.for_run(self.t, self.world, self.recomputed)
                            if self.flops_per_token else None)  # None on CPU
        self.rates = Throughput(tokens_per_step, self.step, self.t.max_steps)
        self.stop_at = min(self.t.max_steps, self.step + self.t.exit_after) if self.t.exit_after else self.t.max_steps
        self.batches = iter(self.loader)
        self.skip: Optional[tuple[int, dict]] = None  # after a rollback: (step, data position past its batches)

    # ---- set-up ------------------------------------------------------------------------------------
    def _build(self, resume: Optional[str], launch_id: Optional[str]) -> None:
        cfg, t = self.cfg, self.t
        seed_everything(t.seed)  # identical initial weights on every rank
        self.model = build_model(cfg.model)
        if t.init_weights and resume is None:
            _load_init_weights(self.model, t.init_weights)
        self.recomputed = accelerate(self.model, t, cfg.model)  # activation checkpointing, torch.compile
        self.engine, self.scheduler = initialize_engine(self.model, cfg, self.world)
        seed_everything(t.seed + self.rank)  # per-rank dropout streams
        common = dict(micro_batch_size=t.micro_batch_size, rank=self.rank, world_size=self.world, seed=t.seed)
        self.loader = StreamingTokenLoader.from_config(
            cfg.data, split="train", samples_per_step=t.micro_batch_size * self.world * t.grad_accum_steps, **common)
        self.val_loader = StreamingTokenLoader.from_config(cfg.data, split="val", loop=False,
                                                           max_batches=t.eval_batches or None, **common)
        self.char_level = self.loader.manifest["tokenizer"]["kind"] == "char"
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep=t.keep_checkpoints,
                                             meta={"config": cfg.model_dump(mode="json"), "launch_id": launch_id})
        self.guard = NonFiniteGuard(t.on_nonfinite, self.checkpoints, self.engine)

    def _resume(self, resume: str) -> Optional[str]:
        """Load a checkpoint into the engine and the data position; returns its MLflow run id."""
        if os.path.isabs(resume) and Path(resume).is_dir():  # a checkpoint directory outside run_dir
            directory = Path(resume)
        else:
            directory = self.checkpoints.root / self.checkpoints.resolve(resume)
        if is_universal(directory):  # converted for another world size or ZeRO stage (`--reshard`)
            state = load_universal(self.engine, directory)
        else:
            state = CheckpointManager(directory.parent).load(self.engine, directory.name)
        self.step = state["step"]
        self.loader.load_state_dict(state["data"])
        self.guard.count = state.get("nonfinite_steps", 0)
        if self.rank == 0:
            log.info("resumed from %s at step %d", directory, self.step)
        return state.get("mlflow_run_id")

    def _start_tracking(self, run_id: Optional[str], launch_id: Optional[str]) -> Optional[MLflowTracker]:
        tc = self.cfg.tracking
        if self.rank != 0 or not tc.enabled:
            return None
        tracker = MLflowTracker(tc.uri, tc.experiment, self.run_dir, retry_interval=tc.retry_interval,
                                system_metrics_every=tc.system_metrics_every)
        config_file = self.run_dir / "config.yaml"
        tracker.start(run_id, tc.run_name, flatten_params(self.cfg.model_dump(mode="json")),
                      config_file=config_file if config_file.exists() else None, launch_id=launch_id,
                      resume_step=self.step)
        return tracker

    # ---- the loop ----------------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train to trainer.max_steps (or exit_after more steps); returns the per-step records
        (rank 0's view; identical on every rank)."""
        while self.step < self.stop_at:
            outcome = self.train_step()
            if outcome is None:  # rolled back: the step counter moved back
                continue
            record = self.log_step(outcome)
            self.maybe_evaluate(record)
            self.metrics.append(record)
            if self.tracker:
                self.tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, self.step)
            self.maybe_checkpoint(record, outcome.stop_signal)
        if self.tracker:
            self.tracker.finish(wait=self.cfg.tracking.finish_timeout)
        dist.barrier()
        return self.metrics.records

    def train_step(self) -> Optional[StepOutcome]:
        """grad_accum_steps micro-batches and the optimizer step; the non-finite policy on a bad step
        (None after a rollback)."""
        if self.skip is not None and self.step == self.skip[0]:
            self.loader.load_state_dict(self.skip[1])
            self.batches, self.skip = iter(self.loader), None
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(self.t.grad_accum_steps):
            batch = next(self.batches).to(self.device, non_blocking=True)  # [mb, T+1]
            loss, objective = training_loss(self.engine, batch)
            self.engine.backward(objective)
            self.engine.step()
            loss_sum += loss.detach()
        self.step += 1
        self.grad_norm = self.engine.get_global_grad_norm()
        outcome = reduce_step(loss_sum / self.t.grad_accum_steps, self.grad_norm, self.stop.local_signal())
        self.stop.agree(outcome.stop_signal)
        if not outcome.finite:
            try:
                state = self.guard.handle(self.step, outcome.loss, self.grad_norm)
            except NonFiniteError:
                if self.tracker:
                    self.tracker.finish(status="FAILED", wait=self.cfg.tracking.finish_timeout)
                raise
            if state is not None:
                self._rolled_back(state)
                return None
        return outcome

    def _rolled_back(self, state: dict) -> None:
        """Replay from the checkpoint's step, then continue past the offending step's batches."""
        self.skip = (self.step - 1, self.loader.state_dict())
        self.step = state["step"]
        self.loader.load_state_dict(state["data"])
        self.batches = iter(self.loader)
        self.metrics.truncate(self.step)
        if self.tracker:
            self.tracker.rewind()

    def log_step(self, outcome: StepOutcome) -> dict:
        record = {"step": self.step, "train/loss": outcome.loss, "train/lr": self.scheduler.get_last_lr()[0]}
        if self.grad_norm is not None:
            record["train/grad_norm"] = float(self.grad_norm)
        if self.guard.count:
            record["train/nonfinite_steps"] = self.guard.count
        if self.step % self.t.log_every == 0 or self.step == self.stop_at:
            speed = self.rates.update(self.step)
            record["train/tokens_per_s"] = speed["tokens_per_s"]
            if self.flops_per_token:
                record["train/tflops"] = speed["tokens_per_s"] * self.flops_per_token / 1e12
            if self.utilization:
                record.update(self.utilization.metrics(speed["tokens_per_s"] * self.flops_per_token))
            record.update(self.loader.metrics())
            if self.rank == 0:
                log.info(progress_line(self.step, self.t.max_steps, outcome.loss, record["train/lr"], speed))
        return record

    def maybe_evaluate(self, record: dict) -> None:
        if not ((self.t.eval_every and self.step % self.t.eval_every == 0) or self.step == self.t.max_steps):
            return
        record.update(evaluate(self.engine, self.val_loader, self.char_level))
        if self.rank == 0:
            log.info("eval step %d | %s", self.step,
                     " | ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val/")))

    def maybe_checkpoint(self, record: dict, stop_signal: int) -> None:
        """Every checkpoint_every steps, at the last step and when a stop was asked for (then stop)."""
        last = self.step == self.stop_at
        if not ((self.t.checkpoint_every and self.step % self.t.checkpoint_every == 0) or last or stop_signal):
            return
        run_id = self.tracker.run_id if self.tracker else None
        path = self.checkpoints.save(self.engine, self.step, {"step": self.step, "data": self.loader.state_dict(),
                                                              "mlflow_run_id": run_id,
                                                              "nonfinite_steps": self.guard.count})
        if self.rank == 0:
            log.info("checkpoint %s", path)
            if self.tracker:  # the metrics up to the checkpoint reach the server before a resume could need them
                self.tracker.flush()
            if self.tracker and self._checkpoint_artifact_due(last):
                self.tracker.log_checkpoint(path, path.name)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.step, path, record)
        if stop_signal:
            self._stopped(stop_signal, path)

    def _checkpoint_artifact_due(self, last: bool) -> bool:
        """Every k-th checkpoint (tracking.checkpoint_artifacts_every) and the last of this invocation."""
        k, every = self.cfg.tracking.checkpoint_artifacts_every, self.t.checkpoint_every
        if not k:
            return False
        return last or (bool(every) and (self.step // every) % k == 0)

    def _stopped(self, signum: int, path: Path) -> None:
        """After the stop checkpoint: mark the MLflow run KILLED at this step, say how to resume, raise `Stopped`."""
        if self.tracker:
            try:
                self.tracker.client.set_tag(self.tracker.run_id, "neurograph.stopped_at_step", str(self.step))
            except Exception as err:  # the server is down
                log.warning("could not tag the MLflow run: %s", err)
            self.tracker.finish(status="KILLED", wait=min(self.cfg.tracking.finish_timeout,
                                                          self.t.preemption_grace_s / 2 or math.inf))
        if self.rank == 0:
            log.warning("stopped by %s at step %d (checkpoint %s); resume with: neurograph train --config %s --resume",
                        signal.Signals(signum).name, self.step, path, self.run_dir / "config.yaml")
        dist.barrier()
        raise Stopped(signum, self.step, path)


def train(cfg, resume: Optional[str] = None, on_checkpoint: Optional[Callable[[int, Path, dict], None]] = None,
          launch_id: Optional[str] = None) -> list[dict]:
    """Train `cfg` on this rank (see `Trainer`); what the launchers' workers call."""
    return Trainer(cfg, resume, on_checkpoint, launch_id).fit()


def _load_init_weights(model: torch.nn.Module, path: str) -> None:
    """Initial weights of a new run (`train --init-from`); buffers are the model's own."""
    from safetensors.torch import load_file

    state = load_file(path)
    wrong = weights_mismatch(model, state)
    if wrong:
        raise ValueError(f"trainer.init_weights {path} does not fit the model: " + "; ".join(wrong[:5]))
    model.load_state_dict(state, strict=False)
    log.info("initial weights from %s", path)
