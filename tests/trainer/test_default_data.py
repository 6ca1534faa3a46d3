"""A new user's path: `data prepare` with every default on a 4 MB text the project was not tuned
for, then the demo config on 2 processes. (The old loader refused this: too few val shards.)"""
import json
import math
import subprocess
import sys

import pytest

from ..conftest import REPO, SHARED_DATA


@pytest.mark.slow
def test_demo_config_trains_on_default_prepared_data(tmp_path):
    corpus = SHARED_DATA / "kjv.txt.xz"  # 4.1 MB of text
    data, run = tmp_path / "data", tmp_path / "run"
    cli = [sys.executable, "-m", "neurograph.launch.cli"]
    subprocess.run([*cli, "data", "prepare", "--input", str(corpus), "--out", str(data)], check=True, cwd=REPO,
                   capture_output=True, timeout=600)
    manifest = json.loads((data / "manifest.json").read_text())
    assert len(manifest["splits"]["val"]["shards"]) == 1 and manifest["splits"]["val"]["samples"] > 500
    done = subprocess.run([*cli, "train", "--config", "configs/demo.yaml", f"data.path={data}", f"trainer.run_dir={run}",
                           "trainer.max_steps=3", "trainer.log_every=1", "trainer.checkpoint_every=0",
                           "tracking.enabled=false"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    if sys.platform == "linux":  # the ranks run on jemalloc (launch/allocator.py), and say so
        assert "malloc: jemalloc (" in done.stderr, done.stderr[-4000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert math.isfinite(records[-1]["val/loss"]) and records[-1]["val/loss"] < math.log(manifest["tokenizer"]["vocab_size"]) + 0.5


@pytest.mark.slow
def test_mixture_trains_and_logs_its_shares(tmp_path, char_data):
    """Two prepared datasets (the same tokenizer) blended 3:1 through `data.mixture`."""
    import shutil

    second = shutil.copytree(char_data, tmp_path / "second")
    run = tmp_path / "run"
    mixture = f"data.mixture=[{{path: {char_data}, weight: 3}}, {{path: {second}, weight: 1}}]"
    done = subprocess.run([sys.executable, "-m", "neurograph.launch.cli", "train", "--config", "configs/demo.yaml", mixture,
                           "data.path=null", "data.seq_len=64", f"trainer.run_dir={run}", "trainer.num_processes=1",
                           "trainer.max_steps=4", "trainer.log_every=2", "trainer.eval_batches=2",
                           "trainer.checkpoint_every=0", "tracking.enabled=false", "model.n_layer=1", "model.d_model=32",
                           "model.n_head=2", "model.d_ff=64"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    shares = {k: v for k, v in records[-1].items() if k.startswith("data/mix/")}
    assert sorted(shares) == ["data/mix/data", "data/mix/second"] and abs(shares["data/mix/data"] - 0.75) < 0.1
