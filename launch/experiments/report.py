"""`neurograph report`: a Markdown report of a sweep made from its MLflow runs alone (the runs a
sweep tagged `sweep.*`; launch/experiments/sweep.py).

- a table per config: final validation BPC (nats of val/loss where the data are not characters),
  mean +/- std over seeds, parameters, tokens, tokens/s, training time, diverged runs;
- PNG plots of validation BPC against tokens and against training time, seeds as a band (min to
  max) around their mean;
- paired comparisons of two configs (same seeds): the mean difference with its 95% t interval."""
from __future__ import annotations

import dataclasses
import math
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from ..config import ConfigError
from .sweep import TAG


@dataclasses.dataclass
class RunResult:
    config: str
    seed: int
    status: str
    parameters: int
    tokens_per_step: int
    training_s: float  # seconds from the first step to the last, time away (stopped, resumed) left out
    budget: str
    curve: list[tuple[int, float, float]]  # (tokens, training seconds, validation value)
    tokens_per_s: Optional[float]

    @property
    def final(self) -> float:
        return self.curve[-1][2] if self.curve else math.nan

    @property
    def diverged(self) -> bool:
        """Stopped on a non-finite loss, or ended worse than its first evaluation."""
        return self.status == "diverged" or not math.isfinite(self.final) or self.final > self.curve[0][2]


def collect(experiment: str, uri: str) -> tuple[list[RunResult], str]:
    """Every sweep-tagged run of `experiment` and the validation metric used ("val/bpc" or "val/loss")."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"no MLflow experiment {experiment!r} at {uri}")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=10_000) if TAG + "config" in r.data.tags]
    if not runs:
        raise ConfigError(f"experiment {experiment!r} has no runs of a sweep (tags {TAG}*) at {uri}")
    metric = "val/bpc" if all("val/bpc" in r.data.metrics for r in runs) else "val/loss"
    results = []
    for run in runs:
        tags = run.data.tags
        per_step = int(tags[TAG + "tokens_per_step"])
        history = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
        speed = [m.value for m in client.get_metric_history(run.info.run_id, "train/tokens_per_s")]
        clock = training_clock(client.get_metric_history(run.info.run_id, "train/loss"))
        results.append(RunResult(
            config=tags[TAG + "config"], seed=int(tags[TAG + "seed"]), status=tags[TAG + "status"],
            parameters=int(tags[TAG + "parameters"]), tokens_per_step=per_step,
            training_s=max(clock.values(), default=0.0), budget=tags[TAG + "budget"],
            tokens_per_s=statistics.fmean(speed) if speed else None,
            curve=[(m.step * per_step, clock.get(m.step, math.nan), m.value) for m in history]))
    return sorted(results, key=lambda r: (r.config, r.seed)), metric


def training_clock(points) -> dict[int, float]:
    """Seconds of training up to each step, from the steps' logged timestamps (start-up excluded). A
    gap over ten typical steps (the run was stopped and resumed later) counts as one typical step."""
    points = sorted(points, key=lambda m: m.step)
    gaps = [(b.timestamp - a.timestamp) / 1000 for a, b in zip(points, points[1:])]
    typical = statistics.median(gaps) if gaps else 0.0
    clock, elapsed = {}, 0.0
    for point, gap in zip(points, [0.0, *gaps]):
        elapsed += gap if gap <= 10 * typical else typical
        clock[point.step] = elapsed
    return clock


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of a_i - b_i and its 95% t interval (n >= 2 pairs)."""
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "-"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(results: list[RunResult], label: str) -> list[str]:
    """One Markdown row per config; diverged runs are counted and left out of the mean."""
    lines = [f"| config | seeds | final {label} (mean ± std) | parameters | tokens | tokens/s | training time (s) | diverged |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for config in sorted({r.config for r in results}):
        runs = [r for r in results if r.config == config]
        kept = [r for r in runs if not r.diverged]
        speeds = [r.tokens_per_s for r in runs if r.tokens_per_s]
        tokens = max(r.curve[-1][0] if r.curve else 0 for r in runs)
        speed = f"{statistics.fmean(speeds):,.0f}" if speeds else "-"
        lines.append(f"| {config} | {len(runs)} | {_mean_std([r.final for r in kept])} | {runs[0].parameters:,} | "
                     f"{tokens:,} | {speed} | {statistics.fmean(r.training_s for r in runs):,.0f} | "
                     f"{len(runs) - len(kept)} |")
    return lines


def plot(results: list[RunResult], label: str, axis: str, path: Path) -> None:
    """Validation curves per config against tokens (axis 0) or seconds (axis 1): the seeds' mean, and
    a band from their minimum to their maximum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = {"tokens": 0, "training time (s)": 1}[axis]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for config in sorted({r.config for r in results}):
        curves = [r.curve for r in results if r.config == config and r.curve]
        n = min(len(c) for c in curves)
        xs = [statistics.fmean(c[i][index] for c in curves) for i in range(n)]
        ys = [[c[i][2] for c in curves] for i in range(n)]
        line, = ax.plot(xs, [statistics.fmean(y) for y in ys], label=f"{config} ({len(curves)} seeds)")
        ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], alpha=0.2, color=line.get_color())
    ax.set_xlabel(axis)
    ax.set_ylabel(f"validation {label}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(experiment: str, uri: str, out: Path, compare: Sequence[tuple[str, str]] = ()) -> Path:
    """Write out/report.md and its plots, with a paired comparison per pair in `compare`; returns
    the report's path."""
    results, metric = collect(experiment, uri)
    label = "BPC" if metric == "val/bpc" else "loss (nats)"
    out.mkdir(parents=True, exist_ok=True)
    budgets = sorted({r.budget for r in results})
    lines = [f"# Sweep report: experiment `{experiment}`", "",
             f"Made {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the MLflow runs at `{uri}` "
             f"({len(results)} runs). Budget per run: {', '.join(budgets)}; parameters and training time (first to "
             "last step, without start-up or time stopped) per config in the table. Diverged runs (a non-finite loss, or ending above their first evaluation) are counted "
             "and left out of the means.", "", *table(results, label), ""]
    for axis, name in (("tokens", "tokens.png"), ("training time (s)", "time.png")):
        plot(results, label, axis, out / f"val_{name}")
        lines += [f"![validation {label} against {axis}](val_{name})", "",
                  f"Validation {label} against {axis}; budget per run: {', '.join(budgets)}; seeds as a band "
                  "(min to max) around their mean.", ""]
    for pair in compare:
        lines += paired_section(results, pair, label)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def paired_section(results: list[RunResult], compare: tuple[str, str], label: str) -> list[str]:
    a, b = ({r.seed: r.final for r in results if r.config == name and not r.diverged} for name in compare)
    seeds = sorted(a.keys() & b.keys())
    if len(seeds) < 2:
        raise ConfigError(f"--compare {compare[0]} {compare[1]}: needs two or more seeds both finished without "
                          f"diverging, found {seeds}")
    mean, low, high = paired_difference([a[s] for s in seeds], [b[s] for s in seeds])
    verdict = ("no difference at 95%" if low <= 0 <= high else
               f"{compare[0] if mean < 0 else compare[1]} is lower at 95%")
    return [f"## {compare[0]} - {compare[1]} (paired by seed)", "",
            f"Final {label}: mean difference {mean:+.4f}, 95% t interval [{low:+.4f}, {high:+.4f}] over "
            f"{len(seeds)} seeds: {verdict}.", ""]
