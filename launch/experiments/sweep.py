"""`neurograph sweep`: every config x seed trained on the same prepared data with an equal budget,
each an MLflow run of one experiment, tagged so that `neurograph report` needs nothing else.

The sweep directory holds `sweep.json` (what was asked and each run's state) and one run directory
per config and seed. Run again with the same arguments, a sweep goes on where it stopped: finished
runs are not repeated, an interrupted one resumes from its newest checkpoint (`train --resume`).
Runs go one after the other, or as Ray tasks on a cluster (`--ray ADDRESS`).

Budgets: `--budget-tokens N` sets every run's trainer.max_steps to N / (tokens per step), rounded
up; `--budget-minutes M` stops each run after M minutes of training (SIGTERM: it checkpoints the
step it is in; its last evaluation before the deadline is its result)."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from ..config import ConfigError, load_config

log = logging.getLogger(__name__)

STATE = "sweep.json"
TAG = "sweep."  # MLflow tags: sweep.id, sweep.config, sweep.seed, sweep.status, ...
FINISHED = ("finished", "budget", "diverged")  # states a restarted sweep does not run again


@dataclasses.dataclass
class SweepRun:
    """One config x seed: the overrides it trains with and where it stands."""

    config: str  # the config file
    name: str  # its stem: the report's row
    seed: int
    run_dir: str
    max_steps: int
    tokens_per_step: int
    parameters: int
    processes: int  # trainer.num_processes: the CPUs a Ray task asks for
    status: str = "pending"  # pending | running | finished | budget | diverged | interrupted | failed
    wall_s: float = 0.0

    def overrides(self, experiment: str, uri: str, sets: list[str]) -> list[str]:
        return [*sets, f"trainer.seed={self.seed}", f"trainer.run_dir={self.run_dir}",
                f"trainer.max_steps={self.max_steps}", "tracking.enabled=true", f"tracking.uri={uri}",
                f"tracking.experiment={experiment}", f"tracking.run_name={self.name}-seed{self.seed}"]


@dataclasses.dataclass
class Sweep:
    id: str
    experiment: str
    tracking_uri: str
    configs: list[str]
    seeds: int
    budget_tokens: Optional[int]
    budget_minutes: Optional[float]
    sets: list[str]
    runs: list[SweepRun]

    def save(self, out: Path) -> None:
        """Written whole, then renamed over the old file: an interrupted write loses nothing."""
        tmp = out / f".{STATE}.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1))
        os.replace(tmp, out / STATE)

    @classmethod
    def load(cls, out: Path) -> "Sweep":
        raw = json.loads((out / STATE).read_text())
        return cls(**{**raw, "runs": [SweepRun(**r) for r in raw["runs"]]})

    def asked(self) -> tuple:
        return self.experiment, self.configs, self.seeds, self.budget_tokens, self.budget_minutes, self.sets


def plan_sweep(configs: list[str], out: Path, seeds: int = 3, budget_tokens: Optional[int] = None,
               budget_minutes: Optional[float] = None, sets: list[str] = (), experiment: Optional[str] = None,
               tracking_uri: Optional[str] = None) -> Sweep:
    """Validate every config (with `sets`) before anything runs: one prepared dataset for all, the
    run sizes under the budget. The sweep stored in `out` when it was asked the same; new otherwise."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if budget_tokens is None and budget_minutes is None:
        raise ConfigError("give a budget: --budget-tokens N or --budget-minutes M (every run gets the same)")
    if (budget_tokens is not None and budget_tokens <= 0) or (budget_minutes is not None and budget_minutes <= 0):
        raise ConfigError("--budget-tokens and --budget-minutes must be positive")
    names = [Path(c).stem for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"--configs: two configs share a file name ({names}); the name identifies a row")
    experiment = experiment or out.name
    uri = tracking_uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"
    loaded = {c: load_config(c, list(sets)) for c in configs}
    datasets = {str(Path(cfg.data.path).resolve()) for cfg in loaded.values()}
    if len(datasets) != 1:
        raise ConfigError(f"the configs train on different data ({sorted(datasets)}): a sweep compares them on one "
                          "prepared dataset; set it for all with --set data.path=DIR")
    runs = []
    for seed in range(seeds):  # seed-major: a sweep stopped early has every config's first seeds
        for config, cfg in loaded.items():
            tokens_per_step = (cfg.trainer.micro_batch_size * cfg.trainer.grad_accum_steps * cfg.world_size
                               * cfg.data.seq_len)
            steps = math.ceil(budget_tokens / tokens_per_step) if budget_tokens else cfg.trainer.max_steps
            runs.append(SweepRun(config=str(config), name=Path(config).stem, seed=seed,
                                 run_dir=str((out / Path(config).stem / f"seed{seed}").resolve()), max_steps=steps,
                                 tokens_per_step=tokens_per_step, parameters=_parameters(cfg),
                                 processes=cfg.world_size))
    sweep = Sweep(uuid.uuid4().hex[:12], experiment, uri, [str(c) for c in configs], seeds, budget_tokens,
                  budget_minutes, list(sets), runs)
    if (out / STATE).is_file():
        stored = Sweep.load(out)
        if stored.asked() != sweep.asked():
            raise ConfigError(f"{out / STATE} holds a sweep asked differently (experiment, configs, seeds, budget, "
                              "--set); continue it with the same arguments or choose another --out")
        return stored
    out.mkdir(parents=True, exist_ok=True)
    sweep.save(out)
    return sweep


def _parameters(cfg) -> int:
    import torch

    from neurograph.model import build_model

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg.model).parameters())


def run_sweep(sweep: Sweep, out: Path, ray_address: Optional[str] = None) -> Sweep:
    """Train every run not finished yet; returns the sweep with each run's final state."""
    todo = [r for r in sweep.runs if r.status not in FINISHED]
    log.info("sweep %s: %d of %d runs to train (experiment %s, %s)", sweep.id, len(todo), len(sweep.runs),
             sweep.experiment, sweep.tracking_uri)

    def record(run: SweepRun, returncode: int, wall_s: float, out_of_time: bool) -> None:
        run.wall_s += wall_s
        run.status = _outcome(run, returncode, out_of_time)
        _tag(sweep, run)
        sweep.save(out)
        log.info("%s seed %d: %s", run.name, run.seed, run.status)

    _create_experiment(sweep, out)
    if ray_address:
        _run_on_ray(ray_address, sweep, todo, record)
        return sweep
    for i, run in enumerate(todo, 1):
        log.info("[%d/%d] %s seed %d -> %s", i, len(todo), run.name, run.seed, run.run_dir)
        run.status = "running"
        sweep.save(out)
        record(run, *train(_train_command(sweep, run), sweep.budget_minutes))
    return sweep


def _create_experiment(sweep: Sweep, out: Path) -> None:
    """The tracking store and the experiment, made once before any run: runs starting at the same
    time (Ray tasks) would otherwise race to create the tables of a new sqlite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep.tracking_uri)
    if client.get_experiment_by_name(sweep.experiment) is None:
        local = sweep.tracking_uri.startswith("sqlite")
        client.create_experiment(sweep.experiment,
                                 artifact_location=(out / "mlartifacts").resolve().as_uri() if local else None)


def _run_on_ray(address: str, sweep: Sweep, runs: list[SweepRun], record) -> None:
    """Every run as a Ray task asking for as many CPUs as the run has processes; Ray places them,
    and each is recorded as it ends."""
    import ray

    ray.init(address=address, log_to_driver=True)
    task = ray.remote(train)
    pending = {task.options(num_cpus=run.processes).remote(_train_command(sweep, run), sweep.budget_minutes): run
               for run in runs}
    while pending:
        [done], _ = ray.wait(list(pending))
        record(pending.pop(done), *ray.get(done))


def _train_command(sweep: Sweep, run: SweepRun) -> list[str]:
    from neurograph.trainer.checkpoint import CheckpointManager

    resume = ["--resume"] if CheckpointManager(Path(run.run_dir) / "checkpoints").published() else []
    return [sys.executable, "-m", "neurograph.launch.cli", "train", "--config", run.config, *resume,
            *run.overrides(sweep.experiment, sweep.tracking_uri, sweep.sets)]


def train(command: list[str], budget_minutes: Optional[float]) -> tuple[int, float, bool]:
    """Run one `neurograph train` (its output goes to ours); with a time budget, SIGTERM at the
    deadline (the run checkpoints its step and ends). Returns (exit code, wall seconds, whether
    the deadline stopped it)."""
    start = time.monotonic()
    proc = subprocess.Popen(command)
    try:
        proc.wait(timeout=None if budget_minutes is None else budget_minutes * 60)
        out_of_time = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        out_of_time = True
    return proc.returncode, time.monotonic() - start, out_of_time


def _outcome(run: SweepRun, returncode: int, out_of_time: bool) -> str:
    """finished (reached max_steps), budget (stopped at the time budget), diverged (stopped on a
    non-finite loss), interrupted (a checkpoint to resume from) or failed."""
    from neurograph.trainer.checkpoint import CheckpointManager, step_of

    published = CheckpointManager(Path(run.run_dir) / "checkpoints").published()
    step = step_of(published[-1]) if published else 0
    if returncode == 0 and step >= run.max_steps:
        return "finished"
    metrics = Path(run.run_dir) / "metrics.jsonl"
    last = json.loads(metrics.read_text().splitlines()[-1]) if metrics.is_file() and metrics.stat().st_size else {}
    if not math.isfinite(last.get("train/loss", 0.0)):
        return "diverged"
    if out_of_time and published:
        return "budget"
    return "interrupted" if published else "failed"


def _tag(sweep: Sweep, run: SweepRun) -> None:
    """What the report reads besides the metrics, as tags of the run's MLflow run."""
    id_file = Path(run.run_dir) / "mlflow_run_id"
    if not id_file.is_file():
        log.warning("%s seed %d has no MLflow run to tag", run.name, run.seed)
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep.tracking_uri)
    tags = {"id": sweep.id, "config": run.name, "seed": run.seed, "status": run.status, "wall_s": f"{run.wall_s:.1f}",
            "parameters": run.parameters, "tokens_per_step": run.tokens_per_step,
            "budget": f"{sweep.budget_tokens:,} tokens" if sweep.budget_tokens else f"{sweep.budget_minutes} minutes"}
    for key, value in tags.items():
        client.set_tag(id_file.read_text().strip(), TAG + key, str(value))
