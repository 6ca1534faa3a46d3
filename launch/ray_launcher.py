"""Ray Train launch: `launcher.ray.num_workers` Ray Train workers, each running the one
trainer (`trainer.trainer.train`) on its DeepSpeed engine.

    neurograph train (driver, e.g. the entrypoint of `ray job submit`)
      -> ray.init(launcher.ray.address | RAY_ADDRESS | a new local instance)
      -> TorchTrainer(_train_loop_per_worker, ScalingConfig, RunConfig(FailureConfig, storage))
           each worker: torch.distributed (gloo on CPU, NCCL on GPU) set up by Ray Train,
           DeepSpeed joins that process group, trainer.trainer.train(...)

Checkpoints. Every rank writes its DeepSpeed shards into `trainer.run_dir/checkpoints`, which
rank 0 publishes atomically (CheckpointManager); the run directory must therefore be on storage
all nodes see (NFS or the like; on one machine any path). Each published checkpoint (every
`trainer.checkpoint_every` steps: a report costs ~2 s on CPU) is then reported to Ray Train
(`ray.train.report(metrics, checkpoint=...)`, uploaded by rank 0) and copied to
`launcher.ray.storage_path` (a path or a URI such as s3://bucket/prefix; default
`<run_dir>/ray`).

Source of truth: the run directory. When a worker dies, Ray Train restarts the worker group
(FailureConfig max_failures) and the workers resume from the newest checkpoint this launch
published there that verifies (`_start_from`): model, optimizer, scheduler, data position, RNG
and MLflow run id. Not from Ray Train's latest reported checkpoint (`ray.train.get_checkpoint()`),
which lags the newest on disk by a report or two (the controller polls the workers). Each launch
has its own name (`<run_dir name>-<time>`, the `launch_id` in every checkpoint's manifest), so a
restart never takes a checkpoint an earlier job left behind (after `--resume STEP` there may be
newer ones). Across jobs (a stopped job submitted again) `--resume` continues the run directory's
`latest`, and `--resume-from mlflow:RUN_ID` first downloads the run's newest checkpoint into it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Optional

from neurograph.trainer.preemption import STOP_SIGNALS, Stopped, clear_stop, exit_code, request_stop

from .allocator import with_allocator
from .config import NeuroGraphConfig
from .logs import VERBOSE_ENV, setup_logging, verbose

log = logging.getLogger("neurograph.launch")

PID_FILE = "ray_worker_rank{rank}.pid"  # in trainer.run_dir: the process of each Ray Train rank


def _ray_address(cfg: NeuroGraphConfig) -> str:
    """launcher.ray.address, else RAY_ADDRESS (set by `ray job submit`), else a new local instance."""
    return cfg.launcher.ray.address or os.environ.get("RAY_ADDRESS") or "local"


def worker_env(cfg: NeuroGraphConfig) -> dict[str, str]:
    r = cfg.launcher.ray
    env = {"PYTHONUNBUFFERED": "1"}
    if verbose():
        env[VERBOSE_ENV] = "1"
    if r.gpus_per_worker == 0:
        env["DS_ACCELERATOR"] = "cpu"
        env["OMP_NUM_THREADS"] = str(max(1, int(r.cpus_per_worker)))
        env = with_allocator(env, cfg.trainer.cpu_allocator)  # Ray starts its workers with these
    return env


def launch_ray(cfg: NeuroGraphConfig, resume: Optional[str]) -> int:
    """Train `cfg` (resolved: absolute paths) on a Ray cluster; returns the exit code."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    r = cfg.launcher.ray
    run_dir = Path(cfg.trainer.run_dir)
    address = _ray_address(cfg)
    if address == "local":
        # Ray Train's controller uses the state API, served by the dashboard (127.0.0.1 by default)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(r.num_workers * r.cpus_per_worker)),
                 log_to_driver=True)
    else:
        ray.init(address=address, log_to_driver=True)
    name = f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = r.storage_path or str(run_dir / "ray")
    use_gpu = r.gpus_per_worker > 0
    resources = {"CPU": r.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = r.gpus_per_worker
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "resume": resume, "launch_id": name},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=use_gpu, resources_per_worker=resources,
                                     placement_strategy=r.placement_strategy),
        run_config=RunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=r.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.trainer.keep_checkpoints),
            worker_runtime_env={"env_vars": worker_env(cfg)},
        ),
    )
    log.info("Ray Train run %s: %d workers, checkpoints reported to %s", name, r.num_workers, storage)
    # `ray job stop` or Ctrl-C: the workers (threads this process cannot signal) read the stop file.
    received: list[int] = []
    clear_stop(run_dir)
    previous = {sig: signal.signal(sig, lambda signum, _: (received.append(signum), request_stop(run_dir, signum)))
                for sig in STOP_SIGNALS}
    try:
        result = trainer.fit()
    except Exception as err:  # TrainingFailedError once max_failures restarts are used up
        log.error("Ray Train run %s failed: %s", name, err)
        return 1
    finally:
        ray.shutdown()
        clear_stop(run_dir)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        return exit_code(received[0])
    if result.error is not None:
        log.error("Ray Train run %s failed: %s", name, result.error)
        return 1
    log.info("Ray Train run %s finished; last checkpoint %s", name,
             result.checkpoint.path if result.checkpoint else None)
    return 0


def _train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: the NeuroGraph trainer loop on a DeepSpeed engine."""
    import ray.train

    from neurograph.trainer.trainer import train

    from .config import validate_config

    cfg = validate_config(config["config"])
    rank = ray.train.get_context().get_world_rank()
    setup_logging(rank=rank, fmt="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run_dir = Path(cfg.trainer.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PID_FILE.format(rank=rank)).write_text(str(os.getpid()))

    def report(step: int, path: Path, record: dict) -> None:
        # Collective: every rank reports; rank 0 uploads the published checkpoint (all shards).
        checkpoint = ray.train.Checkpoint.from_directory(str(path)) if rank == 0 else None
        ray.train.report({**record, "step": step}, checkpoint=checkpoint, checkpoint_dir_name=path.name)

    resume = _start_from(run_dir / "checkpoints", config["launch_id"], config["resume"])
    try:
        train(cfg, resume=resume, on_checkpoint=report, launch_id=config["launch_id"])
    except Stopped:  # a graceful stop (checkpointed): a normal end for Ray Train, nothing to restart
        return


def _start_from(checkpoints_root: Path, launch_id: str, resume: Optional[str]) -> Optional[str]:
    """Collective. Where this worker group starts: after a restart, the newest checkpoint launch
    `launch_id` published that verifies (those that do not are named and skipped); at the first
    start (or a restart before the launch's first checkpoint), `resume`, what the launch was asked."""
    import torch.distributed as dist

    from neurograph.trainer.checkpoint import LATEST, CheckpointManager
    from neurograph.trainer.trainer import setup_distributed

    rank, _ = setup_distributed()
    choice = [resume]
    if rank == 0:  # one rank verifies (hashes every file), all start from its choice
        with contextlib.suppress(FileNotFoundError):  # none of this launch's verifies, or none yet
            choice[0] = CheckpointManager(checkpoints_root).resolve_verified(LATEST, launch_id=launch_id)
            log.info("Ray Train restart: resuming from %s", checkpoints_root / choice[0])
    dist.broadcast_object_list(choice, src=0)
    return choice[0]
