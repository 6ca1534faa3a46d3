"""Everything on a real two-node Ray cluster (tests/launch/ray_nodes.py, loopback only), in one file: one
test worker runs it, so one cluster starts, and it stops when the file ends. Training jobs sent with
`ray job submit --working-dir . -- neurograph train ... launcher.kind=ray`: workers spread over the nodes,
equivalence with the local launcher across a stopped and a resumed job, recovery from a node lost
mid-run, an invalid config failing at submission time. `neurograph doctor --ray` naming the node whose
environment differs, and `neurograph sweep --ray` running its runs as Ray tasks within a time budget."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Iterator

import deepspeed
import pytest
import yaml

from tests.launch.ray_nodes import BIN, REPO, RayCluster
from tests.launch.test_sweep import write_configs
from tests.trainer.runs import (TINY_TRANSFORMER, losses, read_metrics, running, seed_mlflow_store, train,
                                wait_for)

pytestmark = pytest.mark.slow

STEPS = 32  # the node is lost at step 20: 12 steps left, seconds, so the loss lands mid-run
COMMON = ("trainer.checkpoint_every=4", f"trainer.max_steps={STEPS}", "deepspeed.zero_stage=2")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory) -> Iterator[RayCluster]:
    """A head and a second node on loopback; tests that add or kill nodes leave two alive."""
    cluster = RayCluster(tmp_path_factory.mktemp("ray"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def local_losses(tmp_path_factory, char_data) -> list[float]:
    """The Ray jobs' config on the local launcher (torchrun, 2 ranks): the losses each job must match."""
    tmp = tmp_path_factory.mktemp("local")
    return losses(train(tmp, char_data, "local", "trainer.num_processes=2", *COMMON))


def write_config(tmp_path: Path, data_dir: Path, name: str) -> Path:
    cfg = {
        "model": TINY_TRANSFORMER,
        "data": {"path": str(data_dir), "seq_len": 64},
        "trainer": {"max_steps": 12, "micro_batch_size": 4, "lr": 3e-3, "schedule": "onecycle", "warmup_steps": 3,
                    "eval_every": 0, "eval_batches": 2, "log_every": 4, "seed": 7, "run_dir": str(tmp_path / name)},
        "tracking": {"experiment": "tests"},
        "launcher": {"kind": "ray", "ray": {"num_workers": 2, "cpus_per_worker": 1}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def submit_cmd(config: Path, *overrides: str) -> list[str]:
    return [str(BIN / "ray"), "job", "submit", "--working-dir", str(REPO), "--",
            "neurograph", "train", "--config", str(config), *overrides]


def test_ray_jobs_spread_resume_and_recover_a_lost_node_like_the_local_launcher(
        ray_cluster: RayCluster, tmp_path, char_data, local_losses):
    """Job 1 places one worker per node (STRICT_SPREAD: the DeepSpeed group spans both) and stops
    after 8 steps (as a job that hit its time slot or was stopped); job 2 is submitted with --resume
    and continues the run directory. Once it has published step 20, step 20 is damaged on disk and
    the second node is lost (every process of it SIGKILLed at once); when a new node joins,
    Ray Train restarts the workers, which resume from the newest checkpoint of the job on the run's
    storage that verifies, step 16, naming step 20 as skipped. The 32 steps equal the local
    launcher's, in one MLflow run."""
    config = write_config(tmp_path, char_data, "ray")
    run_dir = tmp_path / "ray"
    seed_mlflow_store(run_dir)
    spread = (*COMMON, "launcher.ray.placement_strategy=STRICT_SPREAD")
    job1 = subprocess.run(submit_cmd(config, *spread, "trainer.exit_after=8"), env=ray_cluster.job_env(),
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert job1.returncode == 0 and "succeeded" in job1.stdout + job1.stderr, (job1.stdout + job1.stderr)[-6000:]
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 9))
    run_id = (run_dir / "mlflow_run_id").read_text()
    head, second = ray_cluster.node_with("head_node"), ray_cluster.node_with("second_node")
    log = tmp_path / "job.log"
    with running(submit_cmd(config, *spread, "launcher.ray.max_failures=2", "--resume"), log,
                 env=ray_cluster.job_env(), cwd=REPO) as job:
        # Once step 20 is published, the report of step 12 (each ~2 s) has reached the Ray Train
        # controller (it polls the workers every 2 s), and likely that of 16
        wait_for(lambda: (run_dir / "checkpoints" / "step_00000020").is_dir(), job, log, timeout=900)
        damaged = run_dir / "checkpoints" / "step_00000020"
        shard = damaged / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
        shard.write_bytes(shard.read_bytes()[:1000])
        ray_cluster.leave(second, kill=True)
        replacement = ray_cluster.join("second_node")
        code = job.wait(timeout=900)
    output = log.read_text()
    assert code == 0 and "succeeded" in output, output[-8000:]
    # Ray Train's worker table, "(ip=..., pid=...) world_rank=R, ...", per worker group (lines may repeat):
    # the two ranks on the two nodes, after the restart one on the replacement node
    table = list(dict.fromkeys(re.findall(r"\(ip=(127\.0\.0\.\d+), pid=\d+\) world_rank=(\d)", output)))
    first = {int(rank): ip for ip, rank in table[:2]}
    assert set(first) == {0, 1} and set(first.values()) == {head.ip, second.ip}, table
    assert any(ip == replacement.ip for ip, _ in table[2:]), table
    assert "resumed from" in output and "step_00000008" in output, output[-8000:]
    # from the run directory (not Ray Train's copy, which lags it; not again from --resume's step 8)
    assert f"skipping checkpoint {damaged}: {shard.name} does not match its sha256" in output, output[-8000:]
    restarts = set(re.findall(r"Ray Train restart: resuming from (\S+)", output))  # a line may be printed twice
    assert restarts == {str(run_dir / "checkpoints" / "step_00000016")}, output[-8000:]
    run = read_metrics(run_dir)
    assert [r["step"] for r in run] == list(range(1, STEPS + 1))
    assert max(abs(a - b) for a, b in zip(losses(run), local_losses)) < 1e-6, (losses(run), local_losses)
    assert (run_dir / "mlflow_run_id").read_text() == run_id  # one MLflow run across both jobs
    # every checkpoint was reported to Ray Train (storage_path defaults to <run_dir>/ray), one Ray run per job
    reported = sorted(p.relative_to(run_dir / "ray").parts for p in (run_dir / "ray").glob("*/step_*"))
    assert len({job for job, _ in reported}) == 2
    assert sorted(tag for _, tag in reported)[-1] == f"step_{STEPS:08d}"

    # one MLflow run, every step logged exactly once
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == run_id
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    assert runs[0].info.status == "FINISHED"


def test_invalid_config_fails_at_submission(ray_cluster: RayCluster, tmp_path, char_data):
    config = write_config(tmp_path, char_data, "invalid")
    proc = subprocess.run(submit_cmd(config, "deepspeed.zero_stage=4"), env=ray_cluster.job_env(),
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    assert "deepspeed.zero_stage: Input should be 0, 1, 2 or 3 (got 4)" in output, output[-4000:]
    assert "failed" in output
    assert not (tmp_path / "invalid").exists()  # nothing started: no run directory, no worker


def test_cluster_names_the_node_whose_environment_differs(tmp_path, ray_cluster):
    shadow = tmp_path / "shadow"  # a deepspeed 0.0.1 distribution found before the installed one
    (shadow / "deepspeed-0.0.1.dist-info").mkdir(parents=True)
    (shadow / "deepspeed-0.0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: deepspeed\n"
                                                                    "Version: 0.0.1\n")
    odd = ray_cluster.join(env={"PYTHONPATH": str(shadow)})
    try:
        proc = subprocess.run([str(BIN / "ray"), "job", "submit", "--", "neurograph", "doctor", "--ray", "auto"],
                              env=ray_cluster.job_env(), capture_output=True, text=True, timeout=600)
    finally:
        ray_cluster.leave(odd)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "failed" in output, output[-6000:]
    lines = {line.split()[0]: line for line in output.splitlines() if line.strip().startswith("127.0.0.")}
    assert set(lines) == {node.ip for node in ray_cluster.nodes} | {odd.ip}, output[-6000:]
    assert lines.pop(odd.ip).endswith(f"DIFFERS: deepspeed 0.0.1 (driver: {deepspeed.__version__})"), output[-6000:]
    assert all(line.endswith("same as the driver") for line in lines.values()), lines


def test_sweep_as_ray_tasks_with_a_time_budget(ray_cluster, tmp_path, char_data):
    """`neurograph sweep --ray auto --budget-minutes M` submitted as a Ray job: the two runs train at
    once, as Ray tasks of one CPU each (one per node), each stopped by SIGTERM at its deadline after
    checkpointing its step: both end as "budget" in sweep.json and in MLflow."""
    from mlflow.tracking import MlflowClient

    budget_s, out = 30, tmp_path / "out"
    cmd = [str(BIN / "ray"), "job", "submit", "--", "neurograph", "sweep", "--configs",
           *write_configs(tmp_path, char_data), "--seeds", "1", "--budget-minutes", str(budget_s / 60),
           "--set", "trainer.max_steps=100000", "--ray", "auto", "--out", str(out)]
    proc = subprocess.run(cmd, env=ray_cluster.job_env(), capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    (tmp_path / "job.log").write_text(output)  # whole, for a failure's post-mortem
    assert proc.returncode == 0 and "succeeded" in output, output[-6000:]
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["budget", "budget"], output[-6000:]
    for run in runs:
        assert budget_s <= run["wall_s"] < budget_s + 30, run
        steps = [r["step"] for r in read_metrics(Path(run["run_dir"]))]
        assert 0 < steps[-1] < 100000 and (Path(run["run_dir"]) / "checkpoints" / f"step_{steps[-1]:08d}").is_dir()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    mlflow_runs = client.search_runs([client.get_experiment_by_name("out").experiment_id])
    assert sorted(r.data.tags["sweep.status"] for r in mlflow_runs) == ["budget", "budget"]
    assert {r.data.tags["sweep.budget"] for r in mlflow_runs} == {f"{budget_s / 60} minutes"}
    # trained at the same time: each run's process wrote its config.yaml before either wrote its last metrics
    # (MLflow's start times are no proof: on a loaded machine a run may reach its first logged step only after
    # the other's deadline)
    starts = [(Path(r["run_dir"]) / "config.yaml").stat().st_mtime for r in runs]
    ends = [(Path(r["run_dir"]) / "metrics.jsonl").stat().st_mtime for r in runs]
    assert max(starts) < min(ends), (starts, ends)
