"""`neurograph doctor`: one process's report, and the session's Ray cluster joined by a node whose
environment differs (a second deepspeed distribution ahead of the real one on its PYTHONPATH): that node
is named with what differs and the command exits 1; the other nodes, identical, are not."""
from __future__ import annotations

import json
import subprocess

import pytest
import deepspeed
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


@pytest.mark.slow
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
