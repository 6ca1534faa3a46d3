"""`neurograph doctor`: one process's report and how two reports differ (the check across a Ray
cluster's nodes is in test_ray_cluster.py, with the other tests on the session's cluster)."""
from __future__ import annotations

import json
import subprocess

import torch

from neurograph.launch.environment import PACKAGES, differences
from neurograph.launch.lockfile import LOCK_DIR, file_sha256
from tests.launch.ray_nodes import BIN


def test_report_of_this_process(tmp_path):
    proc = subprocess.run([str(BIN / "neurograph"), "doctor", "--json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert set(report["packages"]) == set(PACKAGES)
    assert report["packages"]["torch"] == torch.__version__
    assert report["torch_cuda"] == torch.version.cuda and report["openmp"] == torch.backends.openmp.is_available()
    lock = "cpu.txt" if torch.version.cuda is None else "cuda.txt"
    assert report["lock"]["file"] == str(LOCK_DIR / lock) and report["lock_sha256"] == file_sha256(LOCK_DIR / lock)
    assert report["lock"]["departures"] == [] and report["lock"]["matches_pyproject"] is True
    assert len(report["environment_sha256"]) == 64 and report["gpus"] == []
    assert report["compiler"].startswith(("c++", "g++", "clang")) and report["python"].count(".") == 2


def test_differences_name_each_field_that_departs():
    driver = {"python": "3.11.7", "packages": dict.fromkeys(PACKAGES, "1.0"), "lock_sha256": "a" * 64,
              "installed": {"deepspeed": "1.0", "six": "1.16.0", "zipp": "3.0"}}
    assert differences(driver, driver) == []
    node = {**driver, "packages": {**driver["packages"], "deepspeed": "0.0.1"}, "lock_sha256": "c" * 64,
            "installed": {"deepspeed": "0.0.1", "six": "1.17.0", "extra": "2.0", "zipp": "3.0"}}
    assert differences(node, driver) == [
        "deepspeed 0.0.1 (driver: 1.0)", f"lock_sha256 {'c' * 16} (driver: {'a' * 16})",
        "2 other distributions, e.g. extra 2.0 (driver: None), six 1.17.0 (driver: 1.16.0)"]
