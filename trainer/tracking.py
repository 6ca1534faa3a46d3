"""MLflow tracking from rank 0, buffered so that an unreachable server never stops training.

Metrics go to a local buffer and are sent in batches; when the server does not answer, a
warning is logged, the batch stays buffered and is retried later. `finish()` reports how
many points were dropped if the server never came back.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

log = logging.getLogger("neurograph.tracking")

_MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def flatten_params(tree: dict, prefix: str = "") -> dict:
    """Nested config dict -> {"section.key": value} for MLflow params."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        out.update(flatten_params(value, name) if isinstance(value, dict) else {name: value})
    return out


def default_tracking_uri(run_dir: str | Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


class MLflowTracker:
    def __init__(self, uri: Optional[str], experiment: str, run_dir: str | Path,
                 retry_interval: float = 10.0):
        if uri and uri.startswith("http"):
            # Fail fast instead of MLflow's minutes of retries; we retry ourselves.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        from mlflow.tracking import MlflowClient

        self.run_dir = Path(run_dir)
        self.uri = uri or default_tracking_uri(run_dir)
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri=self.uri)
        self.retry_interval = retry_interval
        self.run_id: Optional[str] = None
        self._pending: list = []
        self._next_try = 0.0
        self._skip_through = -1
        self._warned = False

    def start(self, run_id: Optional[str], run_name: Optional[str], params: dict,
              config_file: Optional[Path] = None) -> str:
        """Create a run (logging params and the resolved config file) or continue `run_id`;
        returns the run id."""
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            # Steps logged before an interruption are not logged twice.
            history = self.client.get_metric_history(run_id, "train/loss")
            self._skip_through = max((m.step for m in history), default=-1)
            return run_id
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            artifacts = (self.run_dir / "mlartifacts").resolve().as_uri() if self.uri.startswith("sqlite") else None
            exp_id = self.client.create_experiment(self.experiment, artifact_location=artifacts)
        else:
            exp_id = exp.experiment_id
        run = self.client.create_run(exp_id, run_name=run_name)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        if config_file is not None:
            self.client.log_artifact(self.run_id, str(config_file))
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step <= self._skip_through:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send buffered metrics; False when some remain buffered."""
        if not self._pending:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        try:
            while self._pending:
                self.client.log_batch(self.run_id, metrics=self._pending[:_MAX_BATCH])
                del self._pending[:_MAX_BATCH]
        except Exception as err:  # any transport or server error: keep the points, retry later
            self._next_try = time.monotonic() + self.retry_interval
            if not self._warned:
                log.warning("MLflow at %s unreachable (%s); buffering metrics and retrying", self.uri,
                            type(err).__name__)
                self._warned = True
            return False
        if self._warned:
            log.warning("MLflow reachable again; buffered metrics delivered")
            self._warned = False
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
            log.warning("MLflow never came back: %d metric points dropped", dropped)
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as err:
            log.warning("could not mark the MLflow run %s: %s", status, err)
        return dropped
