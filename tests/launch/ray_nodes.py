"""A real multi-node Ray cluster on one box, for the tests: `ray start --block` nodes on their own
loopback addresses (127.0.0.2, .3, ...) with their own ports and, where asked, a custom resource
naming them. One cluster serves the tests of tests/launch/test_ray_cluster.py; they add and
remove nodes on it.

Every Ray process runs in its node's own session and is ended by process group (never `ray stop`,
which would end any Ray on the machine)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import psutil

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:  # it answers
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End a process started with start_new_session=True and everything in its session."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait()
                return
            proc.poll()
            time.sleep(0.2)
    proc.wait(timeout=5)


def ray_env() -> dict[str, str]:
    env = dict(os.environ)
    # .venv/bin last: `neurograph` is found, but `ninja` stays the one the local runs use (two ninja
    # versions alternating make DeepSpeed rebuild its shm op, ~1 min each time)
    env.update(PATH=f"{env.get('PATH', '')}{os.pathsep}{BIN}", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1",  # nodes may join (`ray start --address` refuses otherwise)
               RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="disabled")  # loopback-only test cluster; whatever ~/.ray/auth_token holds
    env.pop("RAY_ADDRESS", None)
    return env


class Node:
    """One `ray start --block` node with one CPU on a loopback address, its own ports, its own session."""

    def __init__(self, log: Path, ip: str, *args: str, env: Optional[dict[str, str]] = None):
        ports = [(flag, str(free_port())) for flag in (
            "--node-manager-port", "--object-manager-port", "--metrics-export-port", "--dashboard-agent-grpc-port",
            "--dashboard-agent-listen-port", "--runtime-env-agent-port")]
        self.ip = ip
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address", ip, "--num-cpus", "1",
             "--disable-usage-stats", *[x for pair in ports for x in pair], *args],
            stdout=self.log, stderr=subprocess.STDOUT, env={**ray_env(), **(env or {})}, start_new_session=True)

    def kill(self) -> None:
        """The machine is lost: SIGKILL to every process of the node at once (raylet, workers)."""
        processes = psutil.Process(self.proc.pid).children(recursive=True)
        for process in processes:
            process.send_signal(signal.SIGKILL)
        psutil.wait_procs(processes, timeout=30)

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()


class RayCluster:
    """A head node (resource head_node) and a second node (resource second_node); `api` is the job
    API's address, `gcs` the address nodes join."""

    def __init__(self, logs: Path, attempts: int = 3):
        """Start the head, then the second node. The head's raylet, like any node's, gets 30 s to register with
        the GCS (Ray's constant), which a loaded machine can miss: the head is started again then."""
        self.logs, self.temp = logs, tempfile.mkdtemp(prefix="ngray")  # Ray's unix socket paths must fit 107 chars
        self.last_ip, self.nodes = 2, []
        try:
            for attempt in range(attempts):
                port, dashboard = free_port(), free_port()
                self.api, self.gcs = f"http://127.0.0.1:{dashboard}", f"127.0.0.2:{port}"
                head = Node(logs / f"head{attempt}.log", "127.0.0.2", "--head", "--port", str(port),
                            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                            "--ray-client-server-port", str(free_port()), "--resources", '{"head_node": 1}',
                            "--temp-dir", self.temp)
                self.nodes = [head]
                if self._registered(head):
                    break
                head.stop()
            else:
                raise AssertionError(f"the head node did not start in {attempts} attempts: "
                                     f"{(logs / f'head{attempts - 1}.log').read_text()[-3000:]}")
            self.join("second_node")
        except BaseException:
            self.stop()
            raise

    def _registered(self, head: Node, timeout: float = 240) -> bool:
        """Whether the head came up (its dashboard answers and the GCS lists it alive); False when its process
        ended first."""
        deadline = time.monotonic() + timeout
        while head.proc.poll() is None:
            assert time.monotonic() < deadline, f"the head node did not come up in {timeout} s"
            try:
                wait_http(f"{self.api}/api/version", 5)
                if self.alive():
                    return True
            except (TimeoutError, AssertionError):  # not answering yet, or its process is ending
                pass
            time.sleep(1)
        return False

    def next_ip(self) -> str:
        self.last_ip += 1
        return f"127.0.0.{self.last_ip}"

    def join(self, resource: Optional[str] = None, env: Optional[dict[str, str]] = None,
             attempts: int = 3) -> Node:
        """Start a node and wait until it is alive. A raylet gets 30 s (Ray's constant) to register
        with the GCS; on a loaded machine that can pass, and the node is started again."""
        expect = len(self.alive()) + 1
        args = ("--address", self.gcs, *(("--resources", json.dumps({resource: 1})) if resource else ()))
        for attempt in range(attempts):
            ip = self.next_ip()
            node = Node(self.logs / f"{ip}.log", ip, *args, env=env)
            deadline = time.monotonic() + 120
            try:
                while node.proc.poll() is None and time.monotonic() < deadline:
                    if len(self.alive()) == expect:
                        self.nodes.append(node)
                        return node
                    time.sleep(1)
            except BaseException:  # not one of self.nodes yet: stop() would leave it running
                node.stop()
                raise
            node.stop()
        raise AssertionError(f"no node joined in {attempts} attempts: {(self.logs / f'{ip}.log').read_text()[-3000:]}")

    def leave(self, node: Node, kill: bool = False) -> None:
        """Stop a node, or kill it (Node.kill), and wait until the cluster no longer counts it."""
        if kill:
            node.kill()
        else:
            node.stop()
        wait_until(lambda: node.ip not in {n["node_ip"] for n in self.alive().values()}, 120, f"node {node.ip} to leave")
        node.stop()  # what a killed node left running
        self.nodes.remove(node)

    def alive(self) -> dict[str, dict]:
        """node id -> Ray's record of each alive node (node_ip, resources_total, ...)."""
        return {n["node_id"]: n for n in self.nodes_listed() if n["state"] == "ALIVE"}

    def node_with(self, resource: str) -> Node:
        """The alive node that has this custom resource."""
        ips = {n["node_ip"] for n in self.alive().values() if resource in n["resources_total"]}
        return next(node for node in self.nodes if node.ip in ips)

    def nodes_listed(self, timeout: float = 120) -> list[dict]:
        """Ray's state API records of the nodes, asked over HTTP (what `ray list nodes` asks; polling with that
        command started a Python importing Ray every second, the CPU a starting raylet needs on a loaded
        machine). The API answers some seconds after the dashboard's /api/version does: until then it is
        asked again."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.api}/api/v0/nodes?limit=1000&detail=true", timeout=30) as reply:
                    return json.load(reply)["data"]["result"]["result"]
            except OSError as error:  # refused, or an HTTP error while the API comes up
                assert time.monotonic() < deadline, f"Ray's state API did not answer in {timeout} s: {error}"
                time.sleep(2)

    def job_env(self) -> dict[str, str]:
        """The environment of `ray job submit` to this cluster."""
        return {**ray_env(), "RAY_API_SERVER_ADDRESS": self.api}

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.temp, ignore_errors=True)
