"""Local launch: `trainer.num_processes` ranks on this machine under torchrun (gloo on CPU).

Signals. torchrun runs in its own session and starts each rank in a session of its own, so a
Ctrl-C at the terminal reaches only this launcher, which decides what every process gets: the
first SIGINT/SIGTERM is passed to the ranks (they finish their step, checkpoint and exit, see
`trainer.preemption`); a second one, or `trainer.preemption_grace_s` (+ a margin) without an
end, kills every process group it started; once the ranks have stopped, further signals are ignored
while the launcher exits with 128 + the first. Whatever happens, no process of the run outlives it:
each rank leads a process group (its DataLoader workers included), killed at the end.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import psutil
import torch

from neurograph.trainer.preemption import STOP_SIGNALS, clear_stop, exit_code

from .allocator import with_allocator
from .config import NeuroGraphConfig

LAUNCHED_BY_NEUROGRAPH = "NEUROGRAPH_LOCAL_LAUNCHER"  # in the ranks' environment
KILL_MARGIN_S = 15.0  # beyond the ranks' own grace period, before the launcher kills them


def worker_env(num_processes: int, allocator: str) -> dict[str, str]:
    env = {**os.environ, LAUNCHED_BY_NEUROGRAPH: "1"}
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        # Share the cores between the ranks instead of oversubscribing them.
        cores = os.cpu_count() or 1
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // num_processes)))
        if int(env["OMP_NUM_THREADS"]) * num_processes > cores:
            print(f"warning: OMP_NUM_THREADS={env['OMP_NUM_THREADS']} for each of {num_processes} processes "
                  f"oversubscribes {cores} cores (unset it to give each rank {max(1, cores // num_processes)})",
                  file=sys.stderr)
        env = with_allocator(env, allocator)
    return env


class ProcessTree:
    """torchrun (a session leader) and the process groups of its ranks, and what a signal does to them."""

    def __init__(self, proc: subprocess.Popen, grace_s: float):
        self.proc = proc
        self.grace_s = grace_s
        self.groups = {proc.pid}
        self.received: list[int] = []
        self.deadline = math.inf

    def ranks(self) -> list[int]:
        """Pids of torchrun's children (the ranks); remembers their process groups."""
        try:
            pids = [p.pid for p in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                self.groups.add(os.getpgid(pid))
        return pids

    def on_signal(self, signum: int, frame) -> None:
        self.received.append(signum)
        if len(self.received) > 1:
            self.kill_all()
            return
        ranks = self.ranks()
        for pid in ranks or [self.proc.pid]:  # no rank yet: torchrun passes it on
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if self.grace_s:
            self.deadline = time.monotonic() + self.grace_s + KILL_MARGIN_S

    def wait(self) -> int:
        while self.proc.poll() is None:
            self.ranks()  # learn the ranks' groups while they live
            if time.monotonic() > self.deadline:
                self.kill_all()
            time.sleep(0.2)
        return exit_code(self.received[0]) if self.received else self.proc.returncode

    def kill_all(self) -> None:
        self.ranks()
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)


def launch_local(cfg: NeuroGraphConfig, config_file: Path, resume: Optional[str]) -> int:
    """Run the trainer on `cfg.trainer.num_processes` local ranks; returns the exit code
    (128 + the signal number after a stop on SIGINT/SIGTERM)."""
    n = cfg.trainer.num_processes
    clear_stop(cfg.trainer.run_dir)  # a stop request left by an earlier launch
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "neurograph.launch.worker", str(config_file)]
    if resume is not None:
        cmd.append(f"--resume={resume}")
    tree = ProcessTree(subprocess.Popen(cmd, env=worker_env(n, cfg.trainer.cpu_allocator), start_new_session=True),
                       cfg.trainer.preemption_grace_s)
    previous = {sig: signal.signal(sig, tree.on_signal) for sig in STOP_SIGNALS}
    try:
        return tree.wait()
    finally:
        tree.kill_all()  # nothing of the run outlives the launcher
        for sig, handler in previous.items():  # after a stop the launcher is on its way out with 128 + that
            signal.signal(sig, signal.SIG_IGN if tree.received else handler)  # signal: another changes nothing
