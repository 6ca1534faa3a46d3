"""Throughput and progress lines: step, loss, lr, tokens/s, elapsed, ETA."""
from __future__ import annotations

import time


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Throughput:
    """Tokens/s over the last interval and an ETA from the mean step time since start."""

    def __init__(self, tokens_per_step: int, start_step: int, max_steps: int):
        self.tokens_per_step = tokens_per_step
        self.start_step, self.max_steps = start_step, max_steps
        self.t0 = self.t_last = time.perf_counter()
        self.step_last = start_step

    def update(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps = max(1, step - self.step_last)
        tokens_per_s = steps * self.tokens_per_step / max(1e-9, now - self.t_last)
        self.t_last, self.step_last = now, step
        elapsed = now - self.t0
        eta = elapsed / max(1, step - self.start_step) * (self.max_steps - step)
        return {"tokens_per_s": tokens_per_s, "elapsed_s": elapsed, "eta_s": eta}


def progress_line(step: int, max_steps: int, loss: float, lr: float, rates: dict[str, float]) -> str:
    return (f"step {step:>6}/{max_steps} | loss {loss:.4f} | lr {lr:.2e} | "
            f"{rates['tokens_per_s']:,.0f} tok/s | elapsed {format_duration(rates['elapsed_s'])} | "
            f"ETA {format_duration(rates['eta_s'])}")
