"""Local launch: `trainer.num_processes` ranks on this machine under torchrun (gloo on CPU)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from .config import NeuroGraphConfig


def worker_env(num_processes: int) -> dict[str, str]:
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        # Share the cores between the ranks instead of oversubscribing them.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    return env


def launch_local(cfg: NeuroGraphConfig, config_file: Path, resume: Optional[str]) -> int:
    """Run the trainer on `cfg.trainer.num_processes` local ranks; returns the exit code."""
    n = cfg.trainer.num_processes
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "launch.worker", str(config_file)]
    if resume is not None:
        cmd.append(f"--resume={resume}")
    return subprocess.call(cmd, env=worker_env(n))
