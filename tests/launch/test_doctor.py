"""`neurograph doctor`: one process's report, and a two-node Ray cluster where one node's environment
differs (a second deepspeed distribution ahead of the real one on that node's PYTHONPATH): that node is
named with what differs and the command exits 1; the head node, identical, is not."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile

import pytest
import deepspeed
import torch

from neurograph.launch.environment import PACKAGES, differences
from neurograph.launch.lockfile import LOCK_DIR, file_sha256
from tests.launch.test_ray_cluster import BIN, free_port, job_env, wait_http
from tests.launch.test_ray_multinode import Node, join


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
def test_cluster_names_the_node_whose_environment_differs(tmp_path):
    shadow = tmp_path / "shadow"  # a deepspeed 0.0.1 distribution found before the installed one
    (shadow / "deepspeed-0.0.1.dist-info").mkdir(parents=True)
    (shadow / "deepspeed-0.0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: deepspeed\n"
                                                                    "Version: 0.0.1\n")
    temp = tempfile.mkdtemp(prefix="ngdoc")  # short: Ray's unix socket paths must fit 107 chars
    gcs, dashboard = free_port(), free_port()
    api = f"http://127.0.0.1:{dashboard}"
    nodes = [Node(tmp_path / "head.log", "127.0.0.2", "--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
                  "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()), "--temp-dir", temp)]
    try:
        wait_http(f"{api}/api/version", 120)
        nodes.append(join(api, tmp_path / "node2.log", "127.0.0.3", "--address", f"127.0.0.2:{gcs}", expect=2,
                          env={"PYTHONPATH": str(shadow)}))
        proc = subprocess.run([str(BIN / "ray"), "job", "submit", "--", "neurograph", "doctor", "--ray", "auto"],
                              env=job_env(api), capture_output=True, text=True, timeout=600)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "failed" in output, output[-6000:]
        lines = set(line.strip() for line in output.splitlines() if line.strip().startswith("127.0.0."))
        assert len(lines) == 2, output[-6000:]
        head, = [line for line in lines if "127.0.0.2" in line]
        second, = [line for line in lines if "127.0.0.3" in line]
        assert head.endswith("same as the driver"), head
        assert second.endswith(f"DIFFERS: deepspeed 0.0.1 (driver: {deepspeed.__version__})"), second
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)
