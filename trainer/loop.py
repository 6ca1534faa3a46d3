"""The training recipe, run by every data-parallel rank on a DeepSpeed engine.

    build model -> DeepSpeed engine -> (resume) -> for each step: micro-batches, backward,
    optimizer step -> log, evaluate, checkpoint -> finish the tracking run
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from neurograph.data_pipeline import IGNORE_INDEX, StreamingTokenLoader
from neurograph.model import build_model

from .acceleration import accelerate
from .checkpoint import CheckpointManager, weights_mismatch
from .collectives import rank_device
from .engine import initialize_engine
from .mfu import Utilization
from .nonfinite import NonFiniteError, NonFiniteGuard, reduce_step
from .preemption import GracefulStop, Stopped
from .progress import Throughput, progress_line
from .tracking import MLflowTracker, flatten_params

log = logging.getLogger("neurograph.trainer")

METRICS_FILE = "metrics.jsonl"


def setup_distributed() -> tuple[int, int]:
    """Join the process group (gloo on CPU, NCCL on GPU) set up by the launcher's env vars."""
    import deepspeed

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def training_loss(engine, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(LM loss, loss to optimize): models may add an auxiliary term through `aux_loss()`
    (e.g. INL's convergence penalty that makes adaptive stopping pay off)."""
    loss = lm_loss(engine(batch[:, :-1]), batch[:, 1:])
    aux = getattr(engine.module, "aux_loss", None)
    return loss, (loss + aux() if aux is not None else loss)


def data_metrics(loader: StreamingTokenLoader) -> dict[str, float]:
    """A mixture's realised share per source (`data/mix/<name>`) and the shards left out as corrupt."""
    out = {"data/skipped_shards": float(len(loader.skipped_shards))} if loader.skipped_shards else {}
    if len(loader.names) > 1:
        out.update({f"data/mix/{Path(name).name}": share for name, share in loader.proportions().items()})
    return out


@torch.no_grad()
def evaluate(engine, loader: StreamingTokenLoader, char_level: bool) -> dict[str, float]:
    """Mean validation loss per token over one pass of `loader`: every rank runs the same number
    of batches, and the padding rows that even out the last one (IGNORE_INDEX) count for nothing."""
    engine.eval()
    total = torch.zeros(2, dtype=torch.float64, device=rank_device())
    for batch in loader:
        batch = batch.to(total.device, non_blocking=True)
        targets = batch[:, 1:]
        logits = engine(batch[:, :-1].clamp(min=0))  # padding rows run as token 0, their targets are ignored
        loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        total += torch.stack([loss_sum.double(), (targets != IGNORE_INDEX).sum().double()])
    engine.train()
    dist.all_reduce(total)
    loss = (total[0] / total[1].clamp(min=1)).item()
    out = {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}
    if char_level:
        out["val/bpc"] = loss / math.log(2)
    return out


def train(cfg, resume: Optional[str] = None,
          on_checkpoint: Optional[Callable[[int, Path, dict], None]] = None,
          launch_id: Optional[str] = None) -> list[dict]:
    """Train `cfg` (a validated `launch.config.NeuroGraphConfig`) on this rank.

    `resume`: None for a new run, else `latest`, a step number or a checkpoint tag of
    `trainer.run_dir`, or the absolute path of a checkpoint directory elsewhere (e.g. one a
    cluster manager restored).
    `on_checkpoint(step, path, record)`: called on every rank after a checkpoint is published
    (a launcher hands it to its cluster manager).
    `launch_id`: names one launch whose workers may be restarted before the first checkpoint;
    the restarted rank 0 continues the MLflow run tagged with it.
    Returns the per-step records (rank 0's view; identical on every rank)."""
    rank, world = setup_distributed()
    device = rank_device()  # batches go there; DeepSpeed puts the model there
    t = cfg.trainer
    run_dir = Path(t.run_dir)
    stop = GracefulStop(run_dir, t.preemption_grace_s).install()
    seed_everything(t.seed)  # identical initial weights on every rank
    model = build_model(cfg.model)
    if t.init_weights and resume is None:
        _load_init_weights(model, t.init_weights)
    recomputed = accelerate(model, t, cfg.model)  # activation checkpointing, torch.compile
    engine, scheduler = initialize_engine(model, cfg, world)
    seed_everything(t.seed + rank)  # per-rank dropout streams

    loader = StreamingTokenLoader.from_config(cfg.data, split="train", micro_batch_size=t.micro_batch_size,
                                              rank=rank, world_size=world, seed=t.seed,
                                              samples_per_step=t.micro_batch_size * world * t.grad_accum_steps)
    val_loader = StreamingTokenLoader.from_config(cfg.data, split="val", micro_batch_size=t.micro_batch_size,
                                                  rank=rank, world_size=world, seed=t.seed, loop=False,
                                                  max_batches=t.eval_batches or None)
    checkpoints = CheckpointManager(run_dir / "checkpoints", keep=t.keep_checkpoints,
                                    meta={"config": cfg.model_dump(mode="json")})
    guard = NonFiniteGuard(t.on_nonfinite, checkpoints, engine)
    step, run_id = 0, None
    if resume is not None:
        source = checkpoints
        if os.path.isabs(resume) and Path(resume).is_dir():  # a checkpoint directory outside run_dir
            source, tag = CheckpointManager(Path(resume).parent), Path(resume).name
        else:
            tag = checkpoints.resolve(resume)
        state = source.load(engine, tag)
        step, run_id = state["step"], state.get("mlflow_run_id")
        loader.load_state_dict(state["data"])
        if rank == 0:
            log.info("resumed from %s at step %d", source.root / tag, step)

    tracker = None
    if rank == 0 and cfg.tracking.enabled:
        tc = cfg.tracking
        tracker = MLflowTracker(tc.uri, tc.experiment, run_dir, retry_interval=tc.retry_interval,
                                system_metrics_every=tc.system_metrics_every)
        run_id = tracker.start(run_id, tc.run_name, flatten_params(cfg.model_dump(mode="json")),
                               config_file=_existing(run_dir / "config.yaml"), launch_id=launch_id,
                               resume_step=step)
    records = _metrics_so_far(run_dir, step) if rank == 0 else []

    char_level = loader.manifest["tokenizer"]["kind"] == "char"
    tokens_per_step = t.micro_batch_size * t.grad_accum_steps * world * cfg.data.seq_len
    flops_per_token = getattr(model, "flops_per_token", lambda _: None)(cfg.data.seq_len)
    utilization = Utilization.for_run(t, world, recomputed) if flops_per_token else None  # None on CPU
    rates = Throughput(tokens_per_step, step, t.max_steps)
    stop_at = min(t.max_steps, step + t.exit_after) if t.exit_after else t.max_steps
    batches = iter(loader)
    skip = None  # after a rollback: (step, data position past the offending batches)
    while step < stop_at:
        if skip is not None and step == skip[0]:
            loader.load_state_dict(skip[1])
            batches, skip = iter(loader), None
        loss_sum = torch.zeros((), device=device)
        for _ in range(t.grad_accum_steps):
            batch = next(batches).to(device, non_blocking=True)  # [mb, T+1]
            loss, objective = training_loss(engine, batch)
            engine.backward(objective)
            engine.step()
            loss_sum += loss.detach()
        step += 1
        grad_norm = engine.get_global_grad_norm()
        step_loss, finite = reduce_step(loss_sum / t.grad_accum_steps, grad_norm)  # one all-reduce
        if not finite:
            try:
                state = guard.handle(step, step_loss, grad_norm)
            except NonFiniteError:
                if tracker:
                    tracker.finish(status="FAILED", wait=cfg.tracking.finish_timeout)
                raise
            if state is not None:  # rolled back: replay from its step, then past step `step`'s batches
                skip = (step - 1, loader.state_dict())
                step = state["step"]
                loader.load_state_dict(state["data"])
                batches = iter(loader)
                records = _metrics_so_far(run_dir, step) if rank == 0 else []
                continue
        record = {"step": step, "train/loss": step_loss, "train/lr": scheduler.get_last_lr()[0]}
        if grad_norm is not None:
            record["train/grad_norm"] = float(grad_norm)
        if guard.count:
            record["train/nonfinite_steps"] = guard.count
        last = step == stop_at
        if step % t.log_every == 0 or last:
            speed = rates.update(step)
            record["train/tokens_per_s"] = speed["tokens_per_s"]
            if flops_per_token:
                record["train/tflops"] = speed["tokens_per_s"] * flops_per_token / 1e12
            if utilization:
                record.update(utilization.metrics(speed["tokens_per_s"] * flops_per_token))
            record.update(data_metrics(loader))
            if rank == 0:
                log.info(progress_line(step, t.max_steps, record["train/loss"], record["train/lr"], speed))
        if (t.eval_every and step % t.eval_every == 0) or step == t.max_steps:
            record.update(evaluate(engine, val_loader, char_level))
            if rank == 0:
                log.info("eval step %d | %s", step, " | ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val/")))
        if rank == 0:
            records.append(record)
            _append_metrics(run_dir, record)
            if tracker:
                tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, step)
        signum = stop.requested()  # collective: any rank signalled -> every rank stops after this step
        if (t.checkpoint_every and step % t.checkpoint_every == 0) or last or signum:
            path = checkpoints.save(engine, step, {"step": step, "data": loader.state_dict(),
                                                   "mlflow_run_id": tracker.run_id if tracker else run_id})
            if rank == 0:
                log.info("checkpoint %s", path)
                if tracker and _log_checkpoint_artifact(cfg, step, last):
                    tracker.log_checkpoint(path, path.name)
            if on_checkpoint is not None:
                on_checkpoint(step, path, record)
        if signum:
            _stopped(tracker, cfg, signum, step, path)
    if tracker:
        tracker.finish(wait=cfg.tracking.finish_timeout)
    dist.barrier()
    return records


def _load_init_weights(model: torch.nn.Module, path: str) -> None:
    """Initial weights of a new run (`train --init-from`); buffers are the model's own."""
    from safetensors.torch import load_file

    state = load_file(path)
    wrong = weights_mismatch(model, state)
    if wrong:
        raise ValueError(f"trainer.init_weights {path} does not fit the model: " + "; ".join(wrong[:5]))
    model.load_state_dict(state, strict=False)
    log.info("initial weights from %s", path)


def _stopped(tracker, cfg, signum: int, step: int, path: Path) -> None:
    """After the stop checkpoint: mark the MLflow run KILLED at `step`, say how to resume, raise `Stopped`."""
    if tracker:
        try:
            tracker.client.set_tag(tracker.run_id, "neurograph.stopped_at_step", str(step))
        except Exception as err:  # the server is down
            log.warning("could not tag the MLflow run: %s", err)
        tracker.finish(status="KILLED", wait=min(cfg.tracking.finish_timeout, cfg.trainer.preemption_grace_s / 2 or math.inf))
    if dist.get_rank() == 0:
        log.warning("stopped by %s at step %d (checkpoint %s); resume with: neurograph train --config %s --resume",
                    signal.Signals(signum).name, step, path, Path(cfg.trainer.run_dir) / "config.yaml")
    dist.barrier()
    raise Stopped(signum, step, path)


def _log_checkpoint_artifact(cfg, step: int, last: bool) -> bool:
    """Every k-th checkpoint (tracking.checkpoint_artifacts_every) and the last of this invocation."""
    k, every = cfg.tracking.checkpoint_artifacts_every, cfg.trainer.checkpoint_every
    if not k:
        return False
    return last or (bool(every) and (step // every) % k == 0)


def _existing(path: Path) -> Optional[Path]:
    return path if path.exists() else None


def _metrics_so_far(run_dir: Path, step: int) -> list[dict]:
    """Records up to `step` from the metrics file, which is rewritten without later steps
    (those are recomputed after a resume)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    kept = [r for r in map(_parse_record, path.read_text().splitlines()) if r is not None and r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _parse_record(line: str) -> Optional[dict]:
    try:
        return json.loads(line)
    except ValueError:  # the last line of a process killed while writing it
        return None


def _append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
