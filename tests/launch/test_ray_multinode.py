"""Multi-node Ray, proven on one box: a head and a second node (`ray start --address`, its own
ports and custom resource, a distinct node id) on loopback. A job sent with `ray job submit`
places one training worker per node (STRICT_SPREAD), the DeepSpeed group of the two ranks spans
both nodes and computes the losses of a local two-process run of the same global batch; the
second node's raylet is then SIGKILLed mid-run, and once a new node joins the job resumes from
the latest checkpoint (within max_failures) and ends with the same losses.

Every Ray process runs in its own session and is ended by process group (never `ray stop`)."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import psutil
import pytest

from tests.launch.test_ray_cluster import (BIN, COMMON, REPO, STEPS, cluster_env, free_port, job_env, records,
                                           stop_group, submit_cmd, wait_http, write_config)
from tests.trainer.runs import losses, running, seed_mlflow_store, wait_for

pytestmark = pytest.mark.slow


def node_env() -> dict[str, str]:
    """cluster_env, but nodes may join (with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 `ray start --address` refuses).
    Each node then takes its own loopback address: Ray would swap 127.0.0.1 itself for the machine's."""
    return {**cluster_env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}


class Node:
    """One `ray start --block` node on 127.0.0.1 with its own ports, in its own session."""

    def __init__(self, log: Path, ip: str, *args: str, env: Optional[dict[str, str]] = None):
        ports = [(flag, str(free_port())) for flag in (
            "--node-manager-port", "--object-manager-port", "--metrics-export-port", "--dashboard-agent-grpc-port",
            "--dashboard-agent-listen-port", "--runtime-env-agent-port")]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address", ip, "--num-cpus", "1",
             "--disable-usage-stats", *[x for pair in ports for x in pair], *args],
            stdout=self.log, stderr=subprocess.STDOUT, env={**node_env(), **(env or {})}, start_new_session=True)

    def raylet(self) -> psutil.Process:
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if child.name() == "raylet":
                return child
        raise LookupError("no raylet under this node")

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()


def join(api: str, log: Path, ip: str, *args: str, expect: int, attempts: int = 3,
         env: Optional[dict[str, str]] = None) -> Node:
    """Start a node and wait until `expect` nodes are alive. A raylet gets 30 s (Ray's constant) to
    register with the GCS; on a loaded machine that can pass, and the node is started again."""
    for attempt in range(attempts):
        node = Node(log.with_suffix(f".{attempt}.log"), ip, *args, env=env)
        deadline = time.monotonic() + 120
        while node.proc.poll() is None and time.monotonic() < deadline:
            if len(alive_nodes(api)) == expect:
                return node
            time.sleep(1)
        node.stop()
    raise AssertionError(f"no node joined at {ip} in {attempts} attempts: "
                         f"{log.with_suffix(f'.{attempts - 1}.log').read_text()[-3000:]}")


def ray_list(api: str, what: str) -> list[dict]:
    out = subprocess.run([str(BIN / "ray"), "list", what, "--address", api, "--format", "json", "--detail",
                          "--limit", "1000"], env=node_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    if not out.stdout.lstrip().startswith("["):  # "No resource in the cluster" while nodes register
        return []
    return json.loads(out.stdout)


def alive_nodes(api: str) -> dict[str, dict]:
    """node id -> resources of the alive nodes."""
    return {n["node_id"]: n["resources_total"] for n in ray_list(api, "nodes") if n["state"] == "ALIVE"}


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_two_node_cluster_spread_equal_losses_and_node_loss_recovery(tmp_path, char_data, local_losses):
    temp = tempfile.mkdtemp(prefix="ngray2")  # short: Ray's unix socket paths must fit 107 chars
    gcs, dashboard = free_port(), free_port()
    api = f"http://127.0.0.1:{dashboard}"
    nodes = [Node(tmp_path / "head.log", "127.0.0.2", "--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
                  "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
                  "--resources", '{"head_node": 1}', "--temp-dir", temp)]
    second = ("--address", f"127.0.0.2:{gcs}", "--resources", '{"second_node": 1}')
    try:
        wait_http(f"{api}/api/version", 120)
        nodes.append(join(api, tmp_path / "node2.log", "127.0.0.3", *second, expect=2))
        node_of = {next(k for k in res if k.endswith("_node")): nid for nid, res in alive_nodes(api).items()}
        assert len(set(node_of.values())) == 2  # distinct node ids, each with its own resource

        config = write_config(tmp_path, char_data, "multinode")
        run_dir = tmp_path / "multinode"
        seed_mlflow_store(run_dir)
        log = tmp_path / "job.log"
        cmd = submit_cmd(config, *COMMON, "launcher.ray.placement_strategy=STRICT_SPREAD",
                         "launcher.ray.max_failures=2")
        with running(cmd, log, env=job_env(api), cwd=REPO) as job:
            wait_for(lambda: (run_dir / "checkpoints" / "step_00000012").is_dir(), job, log, timeout=900)
            nodes[1].raylet().send_signal(signal.SIGKILL)  # the node dies under its worker
            wait_until(lambda: node_of["second_node"] not in alive_nodes(api), 120, "the node's death")
            nodes.append(join(api, tmp_path / "node3.log", "127.0.0.4", *second, expect=2))  # a replacement
            code = job.wait(timeout=900)
        output = log.read_text()
        assert code == 0, output[-8000:]
        # Ray Train's worker table, "(ip=..., pid=...) world_rank=R, ...", per worker group (lines may repeat):
        # the two ranks on the two nodes, after the restart one on the replacement node
        table = list(dict.fromkeys(re.findall(r"\(ip=(127\.0\.0\.\d), pid=\d+\) world_rank=(\d)", output)))
        first = {int(rank): ip for ip, rank in table[:2]}
        assert set(first) == {0, 1} and set(first.values()) == {"127.0.0.2", "127.0.0.3"}, table
        assert any(ip == "127.0.0.4" for ip, _ in table[2:]), table
        resumed = re.search(r"Ray Train restart: resuming from \S*/step_(\d{8})", output)
        assert resumed and int(resumed.group(1)) >= 12, output[-8000:]  # the newest on disk when the node died
        run = records(run_dir)
        assert [r["step"] for r in run] == list(range(1, STEPS + 1))
        assert max(abs(a - b) for a, b in zip(losses(run), local_losses)) < 1e-6, (losses(run), local_losses)
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)
