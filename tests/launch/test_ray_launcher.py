"""The Ray launcher's decisions that need no cluster: where it connects, the worker environment,
the config checks and `--resume-from` errors (all before anything starts)."""
from __future__ import annotations

import sys

import pytest
import yaml

from neurograph.launch.cli import main
from neurograph.launch.config import ConfigError, load_config
from neurograph.launch.ray_launcher import _ray_address, worker_env
from tests.trainer.runs import TINY_TRANSFORMER


@pytest.fixture
def config_file(tmp_path, char_data):
    cfg = {"model": TINY_TRANSFORMER, "data": {"path": str(char_data), "seq_len": 64},
           "trainer": {"max_steps": 4, "micro_batch_size": 4, "run_dir": str(tmp_path / "run")},
           "launcher": {"kind": "ray"}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_address_from_config_then_environment_then_local(config_file, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _ray_address(load_config(config_file)) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert _ray_address(load_config(config_file)) == "http://127.0.0.1:8265"
    assert _ray_address(load_config(config_file, ["launcher.ray.address=10.0.0.1:6379"])) == "10.0.0.1:6379"


def test_cpu_workers_get_the_cpu_accelerator_and_their_threads(config_file):
    env = worker_env(load_config(config_file, ["launcher.ray.cpus_per_worker=3"]))
    assert env["DS_ACCELERATOR"] == "cpu" and env["OMP_NUM_THREADS"] == "3"
    if sys.platform == "linux":  # Ray execs its workers with these: jemalloc preloaded (launch/allocator.py)
        assert "jemalloc" in env["LD_PRELOAD"]
    assert "LD_PRELOAD" not in worker_env(load_config(config_file, ["trainer.cpu_allocator=system"]))
    assert "DS_ACCELERATOR" not in worker_env(load_config(config_file, ["launcher.ray.gpus_per_worker=1"]))


def test_world_size_is_the_number_of_ray_workers(config_file):
    assert load_config(config_file, ["launcher.ray.num_workers=4", "trainer.micro_batch_size=2"]).world_size == 4
    assert load_config(config_file, ["launcher.ray.num_workers=64", "trainer.num_processes=1"]).world_size == 64
    with pytest.raises(ConfigError, match="launcher.ray.placement_strategy"):
        load_config(config_file, ["launcher.ray.placement_strategy=ANYWHERE"])
    with pytest.raises(ConfigError, match="launcher.ray.num_workers"):
        load_config(config_file, ["launcher.ray.num_workers=0"])
    with pytest.raises(ConfigError, match="tracking.checkpoint_artifacts_every"):
        load_config(config_file, ["tracking.checkpoint_artifacts_every=-1"])


@pytest.mark.parametrize("args, message", [
    (["--resume-from", "s3:abc"], "expected mlflow:RUN_ID"),
    (["--resume-from", "mlflow:abc"], "needs tracking.uri"),
    (["--resume", "--resume-from", "mlflow:abc"], "exclude each other"),
])
def test_resume_from_errors_exit_2_before_anything_starts(config_file, tmp_path, capsys, args, message):
    assert main(["train", "--config", str(config_file), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_invalid_ray_config_exits_2_with_the_field(config_file, tmp_path, capsys):
    assert main(["train", "--config", str(config_file), "launcher.ray.max_failures=-5"]) == 2
    assert "launcher.ray.max_failures" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
