"""MLflow tracking from rank 0, buffered so that an unreachable server never stops training.

Metrics go to a local buffer and are sent in batches, at most every `flush_every` seconds (and at
every checkpoint: the trainer flushes there), off the step's path; when the server does not answer, a
warning is logged, the batch stays buffered (and is spilled to `<run_dir>/mlflow_pending.jsonl`,
so that a process killed during an outage loses nothing either) and is retried later.
`finish()` waits a while for the server and reports how many points were dropped if it never
came back. Creating the run goes through the same retry: a run started while the server is down
trains on and is created (with its buffered metrics) when the server answers.

One training run is one MLflow run, whatever happens to the processes:
- the run id is part of every checkpoint, so a resumed run (`--resume`, a Ray Train restart,
  `--resume-from mlflow:RUN_ID`) continues the same MLflow run;
- a launcher that restarts workers before the first checkpoint passes a `launch_id`; the run
  is tagged with it and found again;
- steps already logged are not logged twice: points at steps up to the last step the server
  holds are skipped (recomputed steps after a resume are identical anyway), and so are the
  steps a rollback replays (`rewind`).

Checkpoints can be logged as artifacts `checkpoints/<tag>`; the run tag
`neurograph.latest_checkpoint` names the newest complete upload (it is set only after the
upload finished), which `download_checkpoint` fetches on a machine without the files.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

log = logging.getLogger("neurograph.tracking")

_MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
LAUNCH_TAG = "neurograph.launch_id"
LATEST_CHECKPOINT_TAG = "neurograph.latest_checkpoint"
PENDING_FILE = "mlflow_pending.jsonl"
RUN_ID_FILE = "mlflow_run_id"  # in the run directory, written once the run exists on the server
_PROGRESS_METRIC = "train/loss"  # logged at every step: its history says which steps the server has


def flatten_params(tree: dict, prefix: str = "") -> dict:
    """Nested config dict -> {"section.key": value} for MLflow params."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        out.update(flatten_params(value, name) if isinstance(value, dict) else {name: value})
    return out


def default_tracking_uri(run_dir: str | Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def configure_mlflow_http(uri: Optional[str]) -> None:
    """Fail fast instead of MLflow's minutes of HTTP retries: the tracker retries itself."""
    if uri and uri.startswith("http"):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


class MLflowTracker:
    def __init__(self, uri: Optional[str], experiment: str, run_dir: str | Path,
                 retry_interval: float = 10.0, system_metrics_every: float = 0.0, flush_every: float = 5.0):
        configure_mlflow_http(uri)
        from mlflow.tracking import MlflowClient

        self.run_dir = Path(run_dir)
        self.uri = uri or default_tracking_uri(run_dir)
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri=self.uri)
        self.retry_interval = retry_interval
        self.system_metrics_every = system_metrics_every
        self.flush_every = flush_every
        self._next_flush = 0.0
        self.run_id: Optional[str] = None
        self._pending: list = []
        self._next_try = 0.0
        self._skip_through: Optional[int] = -1  # None: unknown until the server answers
        self._last_step = -1  # the highest step logged by this process
        self._replayed_through = -1  # after a rollback: steps up to here are replays, already logged
        self._warned = False
        self._next_sample = 0.0
        self._failed_checkpoint: Optional[tuple[Path, str]] = None
        self._spill_path = self.run_dir / PENDING_FILE
        self._to_create: Optional[tuple] = None  # (run_name, params, config_file, launch_id) until created

    # ---- run -------------------------------------------------------------------------
    def start(self, run_id: Optional[str], run_name: Optional[str], params: dict,
              config_file: Optional[Path] = None, launch_id: Optional[str] = None,
              resume_step: Optional[int] = None) -> Optional[str]:
        """Create a run (logging params and the resolved config file) or continue `run_id`;
        returns the run id. A new run (or the run tagged with `launch_id`, continued if it
        exists) is created when the server answers: until then its id is None and metrics are
        buffered. `resume_step`: the step the training resumes from (spilled points after it
        are recomputed, so dropped)."""
        if run_id is not None:
            self.run_id = run_id
            self._skip_through = None
            self._restore_spilled(resume_step)
            self._record_run_id()
            try:
                self.client.update_run(run_id, status="RUNNING")
                self._learn_logged_steps()
            except Exception as err:  # the server is down: buffer, dedup once it answers
                self._unreachable(err)
            return run_id
        self._spill_path.unlink(missing_ok=True)
        self._to_create = (run_name, params, config_file, launch_id)
        try:
            self._create()
        except Exception as err:  # the server is down: training goes on, the run is created later
            log.warning("could not create the MLflow run at %s (%s): training goes on, the run is created "
                        "when the server answers", self.uri, type(err).__name__)
            self._unreachable(err)
        return self.run_id

    def _create(self) -> None:
        """Create the pending run (or find the one of its launch); raises while the server is down."""
        run_name, params, config_file, launch_id = self._to_create
        found = self._find_launch(launch_id) if launch_id is not None else None
        if found is not None:
            log.info("continuing MLflow run %s of launch %s", found, launch_id)
            self.client.update_run(found, status="RUNNING")
            self.run_id, self._skip_through, self._to_create = found, None, None
            self._record_run_id()
            return
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            artifacts = (self.run_dir / "mlartifacts").resolve().as_uri() if self.uri.startswith("sqlite") else None
            exp_id = self.client.create_experiment(self.experiment, artifact_location=artifacts)
        else:
            exp_id = exp.experiment_id
        tags = {LAUNCH_TAG: launch_id} if launch_id else None
        run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])
        if config_file is not None:
            self.client.log_artifact(run_id, str(config_file))
        self.run_id, self._to_create = run_id, None
        self._record_run_id()

    def _record_run_id(self) -> None:
        (self.run_dir / RUN_ID_FILE).write_text(self.run_id)

    def _find_launch(self, launch_id: str) -> Optional[str]:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            return None
        runs = self.client.search_runs([exp.experiment_id], filter_string=f"tags.`{LAUNCH_TAG}` = '{launch_id}'",
                                       max_results=1)
        return runs[0].info.run_id if runs else None

    def _learn_logged_steps(self) -> None:
        """Steps the server already holds are not logged twice."""
        history = self.client.get_metric_history(self.run_id, _PROGRESS_METRIC)
        self._skip_through = max((m.step for m in history), default=-1)
        self._pending = [m for m in self._pending if m.step > self._skip_through]

    # ---- metrics ---------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step <= self._replayed_through or (self._skip_through is not None and step <= self._skip_through):
            return
        self._last_step = max(self._last_step, step)
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, step) for k, v in {**metrics, **self._system_metrics()}.items()]
        self._pending.extend(points)
        if self._warned:
            self._spill(points)
        if time.monotonic() >= self._next_flush:
            self.flush()

    def rewind(self) -> None:
        """The trainer rolled back to an earlier checkpoint: the steps it replays up to the last one
        logged are recomputations of logged steps (same weights, same batches) and are not sent again."""
        self._replayed_through = self._last_step

    def _system_metrics(self) -> dict[str, float]:
        if not self.system_metrics_every or time.monotonic() < self._next_sample:
            return {}
        self._next_sample = time.monotonic() + self.system_metrics_every
        try:
            import psutil
        except ImportError:
            return {}
        mem = psutil.virtual_memory()
        return {"system/cpu_percent": psutil.cpu_percent(None), "system/memory_used_mb": mem.used / 2**20,
                "system/memory_percent": mem.percent,
                "system/process_rss_mb": psutil.Process().memory_info().rss / 2**20}

    def flush(self, force: bool = False) -> bool:
        """Send buffered metrics; False when some remain buffered."""
        if not self._pending and self._skip_through is not None and self._to_create is None:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        self._next_flush = time.monotonic() + self.flush_every
        try:
            if self._to_create is not None:
                self._create()
            if self._skip_through is None:
                self._learn_logged_steps()
            while self._pending:
                self.client.log_batch(self.run_id, metrics=self._pending[:_MAX_BATCH])
                del self._pending[:_MAX_BATCH]
        except Exception as err:  # any transport or server error: keep the points, retry later
            self._unreachable(err)
            return False
        if self._warned:
            log.warning("MLflow at %s reachable again; buffered metrics delivered", self.uri)
            self._warned = False
            self._spill_path.unlink(missing_ok=True)
        return True

    def _unreachable(self, err: Exception) -> None:
        self._next_try = time.monotonic() + self.retry_interval
        if not self._warned:
            log.warning("MLflow at %s unreachable (%s); buffering metrics and retrying every %.0f s", self.uri,
                        type(err).__name__, self.retry_interval)
            self._warned = True
            self._spill(self._pending, rewrite=True)

    # ---- spill file: buffered points survive the process ------------------------------
    def _spill(self, points: list, rewrite: bool = False) -> None:
        try:
            with open(self._spill_path, "w" if rewrite else "a") as f:
                for m in points:
                    f.write(json.dumps([m.key, m.value, m.timestamp, m.step]) + "\n")
        except OSError as err:
            log.warning("could not spill buffered metrics to %s: %s", self._spill_path, err)

    def _restore_spilled(self, resume_step: Optional[int]) -> None:
        if not self._spill_path.is_file():
            return
        from mlflow.entities import Metric

        points = []
        for line in self._spill_path.read_text().splitlines():
            try:
                key, value, timestamp, step = json.loads(line)
            except ValueError:  # a line cut by the kill
                continue
            if resume_step is None or step <= resume_step:
                points.append(Metric(key, value, timestamp, step))
        if points:
            log.info("re-sending %d metric points buffered by an earlier process", len(points))
        self._pending = points + self._pending

    # ---- checkpoints as artifacts ----------------------------------------------------
    def log_checkpoint(self, path: str | Path, tag: str) -> bool:
        """Upload a published checkpoint directory as `checkpoints/<tag>`, then mark it the
        run's latest. A failed upload is retried once at `finish()` if the files still exist."""
        try:
            self.client.log_artifacts(self.run_id, str(path), f"checkpoints/{tag}")
            self.client.set_tag(self.run_id, LATEST_CHECKPOINT_TAG, tag)
        except Exception as err:
            log.warning("could not log checkpoint %s to MLflow (%s): will retry at the end of the run", tag,
                        type(err).__name__)
            self._failed_checkpoint = (Path(path), tag)
            return False
        self._failed_checkpoint = None
        log.info("checkpoint %s logged to MLflow run %s", tag, self.run_id)
        return True

    def log_artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        try:
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)
        except Exception as err:
            log.warning("could not log artifacts %s to MLflow: %s", local_dir, err)

    def finish(self, status: str = "FINISHED", wait: float = 60.0) -> int:
        """Deliver what is buffered (waiting up to `wait` s), end the run; returns points dropped."""
        deadline = time.monotonic() + wait
        while not self.flush(force=True) and time.monotonic() < deadline:
            time.sleep(min(2.0, self.retry_interval))
        dropped = len(self._pending)
        if dropped:
            log.warning("MLflow never came back: %d metric points dropped (kept in %s)", dropped,
                        self._spill_path)
        if self._failed_checkpoint is not None and self._failed_checkpoint[0].is_dir():
            self.log_checkpoint(*self._failed_checkpoint)
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as err:
            log.warning("could not mark the MLflow run %s: %s", status, err)
        return dropped


def download_checkpoint(uri: str, run_id: str, checkpoints_root: str | Path) -> str:
    """Fetch the newest checkpoint logged to MLflow run `run_id` into `checkpoints_root/<tag>`
    (staged, verified, then published atomically with `latest`); returns the tag."""
    configure_mlflow_http(uri)
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    from .checkpoint import LATEST, check_checkpoint, is_tag

    client = MlflowClient(tracking_uri=uri)
    tag = client.get_run(run_id).data.tags.get(LATEST_CHECKPOINT_TAG)
    if tag is None:
        raise FileNotFoundError(f"MLflow run {run_id} at {uri} has no logged checkpoint "
                                "(tracking.checkpoint_artifacts_every was 0?)")
    if not is_tag(tag):  # it names a directory here: never trust what the server says
        raise ValueError(f"MLflow run {run_id} names its checkpoint {tag[:100]!r}, which is not a tag (step_N)")
    root = Path(checkpoints_root)
    staging = root / ".staging" / f"mlflow_{tag}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"checkpoints/{tag}",
                                                dst_path=str(staging), tracking_uri=uri)
    problem = check_checkpoint(Path(local))
    if problem is not None:
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(f"checkpoint {tag} of MLflow run {run_id} is not usable: {problem}")
    target = root / tag
    if target.exists():
        shutil.rmtree(target)
    os.replace(local, target)
    shutil.rmtree(staging, ignore_errors=True)
    tmp = root / (LATEST + ".tmp")
    tmp.write_text(tag)
    os.replace(tmp, root / LATEST)
    return tag
