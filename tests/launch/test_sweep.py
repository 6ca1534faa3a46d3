"""`neurograph sweep` and `neurograph report` end to end: two tiny configs x two seeds trained by real
`neurograph train` processes into one MLflow experiment (sqlite). The sweep is stopped (SIGTERM to
its process group) while its third run (the first config's second seed) trains, then started again
with the same command: the finished runs are not trained again, the interrupted one resumes its own
checkpoint and MLflow run. The report is then made from MLflow alone and checked against each run's
metrics.jsonl."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from neurograph.launch.config import ConfigError
from neurograph.launch.experiments.sweep import plan_sweep
from tests.trainer.runs import read_metrics

pytestmark = pytest.mark.slow

STEPS, SEEDS = 40, 2
MODELS = {"lstm_tiny": {"arch": "lstm", "d_model": 32, "n_layer": 1, "dropout": 0.0},
          "transformer_tiny": {"arch": "transformer", "d_model": 32, "n_layer": 1, "n_head": 2, "d_ff": 64,
                               "max_seq_len": 64}}
T_975_1DF = 12.706204736174698  # Student's t, 97.5% quantile, one degree of freedom


def write_configs(root: Path, data: Path) -> list[str]:
    paths = []
    for name, model in MODELS.items():
        cfg = {"model": model, "data": {"path": str(data), "seq_len": 64},
               "trainer": {"micro_batch_size": 4, "lr": 3e-3, "eval_every": 10, "eval_batches": 2, "log_every": 5,
                           "checkpoint_every": 10, "num_processes": 1}}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        paths.append(str(root / f"{name}.yaml"))
    return paths


def sweep_command(configs: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "neurograph.launch.cli", "sweep", "--configs", *configs, "--seeds", str(SEEDS),
            "--budget-tokens", str(STEPS * 4 * 64), "--out", str(out)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, char_data) -> dict:
    """The sweep stopped during its third run and run again; what the test needs to see of both."""
    root = tmp_path_factory.mktemp("sweep")
    configs, out = write_configs(root, char_data), root / "out"
    interrupted = out / "lstm_tiny" / "seed1"
    proc = subprocess.Popen(sweep_command(configs, out), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (interrupted / "checkpoints" / "latest").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    first_output = proc.communicate(timeout=120)[0]
    state = json.loads((out / "sweep.json").read_text())
    finished_first = out / "lstm_tiny" / "seed0"
    before = {"state": state, "finished_metrics": (finished_first / "metrics.jsonl").read_bytes(),
              "run_ids": {p: (p / "mlflow_run_id").read_text() for p in (finished_first, interrupted)},
              "interrupted_steps": [r["step"] for r in read_metrics(interrupted)]}
    again = subprocess.run(sweep_command(configs, out), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return {"out": out, "before": before, "first_output": first_output, "output": again.stdout + again.stderr,
            "uri": f"sqlite:///{out / 'mlflow.db'}"}


def test_a_restarted_sweep_keeps_finished_runs_and_resumes_the_interrupted_one(sweep):
    out, before = sweep["out"], sweep["before"]
    statuses = {(r["name"], r["seed"]): r["status"] for r in before["state"]["runs"]}  # seed-major order
    assert statuses == {("lstm_tiny", 0): "finished", ("transformer_tiny", 0): "finished",
                        ("lstm_tiny", 1): "running", ("transformer_tiny", 1): "pending"}, sweep["first_output"][-3000:]
    assert 0 < len(before["interrupted_steps"]) < STEPS  # stopped mid-run, after a checkpoint
    assert "2 of 4 runs to train" in sweep["output"]
    finished, interrupted = out / "lstm_tiny" / "seed0", out / "lstm_tiny" / "seed1"
    assert (finished / "metrics.jsonl").read_bytes() == before["finished_metrics"]  # not trained again
    assert [r["step"] for r in read_metrics(interrupted)] == list(range(1, STEPS + 1))  # resumed, every step once
    assert (interrupted / "mlflow_run_id").read_text() == before["run_ids"][interrupted]  # the same MLflow run
    state = json.loads((out / "sweep.json").read_text())
    assert {r["status"] for r in state["runs"]} == {"finished"}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep["uri"])
    runs = client.search_runs([client.get_experiment_by_name("out").experiment_id])
    tagged = sorted((r.data.tags["sweep.config"], r.data.tags["sweep.seed"]) for r in runs if "sweep.config" in r.data.tags)
    assert tagged == [("lstm_tiny", "0"), ("lstm_tiny", "1"), ("transformer_tiny", "0"), ("transformer_tiny", "1")]
    assert len(runs) == 4  # no run was started twice


def test_report_from_the_mlflow_runs(sweep, tmp_path):
    from neurograph.launch import cli

    report_dir = tmp_path / "report"
    assert cli.main(["report", "--experiment", "out", "--tracking-uri", sweep["uri"], "--out", str(report_dir),
                     "--compare", "transformer_tiny", "lstm_tiny"]) == 0
    text = (report_dir / "report.md").read_text()
    finals = {name: [read_metrics(sweep["out"] / name / f"seed{s}")[-1]["val/bpc"] for s in range(SEEDS)]
              for name in MODELS}
    for name, values in finals.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[1] == str(SEEDS) and cells[2] == f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"
        assert cells[4] == f"{STEPS * 4 * 64:,}" and cells[7] == "0"
    for png in ("val_tokens.png", "val_time.png"):
        assert (report_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png in text
    diffs = [a - b for a, b in zip(finals["transformer_tiny"], finals["lstm_tiny"])]
    mean, half = statistics.fmean(diffs), T_975_1DF * statistics.stdev(diffs) / math.sqrt(2)
    assert f"mean difference {mean:+.4f}, 95% t interval [{mean - half:+.4f}, {mean + half:+.4f}]" in text
    assert f"Budget per run: {STEPS * 4 * 64:,} tokens" in text


def test_bad_sweeps_fail_before_any_run(tmp_path, char_data):
    configs = write_configs(tmp_path, char_data)
    shutil.copytree(char_data, tmp_path / "copy")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(Path(configs[0]).read_text()),
                                     "data": {"path": str(tmp_path / "copy"), "seq_len": 64}}))
    with pytest.raises(ConfigError, match="different data"):
        plan_sweep([configs[0], str(other)], tmp_path / "a", budget_tokens=1000)
    with pytest.raises(ConfigError, match="budget"):
        plan_sweep(configs, tmp_path / "b")
    with pytest.raises(ConfigError, match="trainer.lr"):
        plan_sweep(configs, tmp_path / "c", budget_tokens=1000, sets=["trainer.lr=-1"])
    plan_sweep(configs, tmp_path / "d", budget_tokens=1000)
    with pytest.raises(ConfigError, match="asked differently"):
        plan_sweep(configs, tmp_path / "d", seeds=2, budget_tokens=1000)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_training_clock_leaves_out_time_stopped():
    """Steps one second apart, stopped for 98 s after step 3: the clock counts that gap as one step."""
    from mlflow.entities import Metric

    from neurograph.launch.experiments.report import training_clock

    points = [Metric("train/loss", 1.0, ms, step) for step, ms in ((1, 0), (2, 1000), (3, 2000), (4, 100_000),
                                                                   (5, 101_000))]
    assert training_clock(reversed(points)) == {1: 0.0, 2: 1.0, 3: 2.0, 4: 3.0, 5: 4.0}
