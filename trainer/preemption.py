"""Graceful stop on SIGINT/SIGTERM (Ctrl-C, a scheduler's preemption, `ray job stop`).

The first signal on any rank, or a stop file in the run directory (written by a launcher that
cannot signal its ranks, e.g. the Ray driver), asks every rank to stop after its current step:
the ranks agree through a flag all-reduced with the step's loss, write a checkpoint at that step and raise
`Stopped`. A second signal, or `trainer.preemption_grace_s` seconds without finishing, ends the
process at once; checkpoints are published atomically, so the last one stays intact.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Optional


STOP_FILE = "STOP"  # in trainer.run_dir: holds the number of the signal to stop with
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


class Stopped(Exception):
    """Training stopped on a signal after checkpointing `step`."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[Path]):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


def request_stop(run_dir: str | Path, signum: int) -> None:
    """Ask the ranks training in `run_dir` to stop after their current step (atomic write)."""
    path = Path(run_dir) / STOP_FILE
    tmp = path.with_name(STOP_FILE + ".tmp")
    tmp.write_text(str(int(signum)))
    os.replace(tmp, path)


def clear_stop(run_dir: str | Path) -> None:
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)


class GracefulStop:
    """Signal handlers of one rank and its stop request, agreed on by the ranks once per step."""

    def __init__(self, run_dir: str | Path, grace_s: float):
        self.stop_file = Path(run_dir) / STOP_FILE
        self.grace_s = grace_s
        self.signum = 0

    def install(self) -> "GracefulStop":
        """Handle SIGINT/SIGTERM in this process (only possible on the main thread; elsewhere,
        e.g. in a Ray Train worker thread, the stop file is the way in)."""
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame) -> None:
        if self.signum:  # the second signal: stop now
            os._exit(exit_code(signum))
        self.signum = signum
        self._arm_deadline(signum)

    def _arm_deadline(self, signum: int) -> None:
        if self.grace_s > 0:
            timer = threading.Timer(self.grace_s, os._exit, (exit_code(signum),))
            timer.daemon = True
            timer.start()

    def local_signal(self) -> int:
        """The signal this rank was asked to stop with (a handler, or the stop file), else 0. Not a
        collective: the trainer all-reduces it together with the step's loss."""
        if not self.signum and self.stop_file.is_file():
            signum = int(self.stop_file.read_text().strip() or signal.SIGTERM)
            self.signum = signum if signum in STOP_SIGNALS else signal.SIGTERM  # what the ranks can agree on
            self._arm_deadline(self.signum)
        return self.signum

    def agree(self, signum: int) -> None:
        """Adopt the signal the ranks agreed on: another rank's keeps this one to the same deadline."""
        if signum and not self.signum:
            self.signum = signum
            self._arm_deadline(signum)
