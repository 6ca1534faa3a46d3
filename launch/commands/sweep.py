"""`neurograph sweep`: every config x seed on one prepared dataset with an equal budget, each an
MLflow run of one experiment; run again, it goes on where it stopped (launch/experiments/sweep.py)."""
from __future__ import annotations

import argparse
from pathlib import Path


def cmd_sweep(args) -> int:
    from ..experiments.sweep import FINISHED, plan_sweep, run_sweep

    out = Path(args.out)
    sweep = plan_sweep(args.configs, out, args.seeds, args.budget_tokens, args.budget_minutes, args.set,
                       args.experiment, args.tracking_uri)
    sweep = run_sweep(sweep, out, args.ray)
    failed = [f"{r.name} seed {r.seed}" for r in sweep.runs if r.status not in FINISHED]
    print(f"sweep {sweep.id}: {len(sweep.runs) - len(failed)} of {len(sweep.runs)} runs done "
          f"(experiment {sweep.experiment} at {sweep.tracking_uri})" + (f"; failed: {', '.join(failed)}" if failed else ""))
    print(f"report: neurograph report --experiment {sweep.experiment} --tracking-uri {sweep.tracking_uri} "
          f"--out {out / 'report'}")
    return 1 if failed else 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help="train configs x seeds on one dataset with an equal budget, as one MLflow experiment",
        description="Every config x seed trains on the same prepared data with the same budget, one after the other "
                    "(or as Ray tasks with --ray), each an MLflow run tagged sweep.id/config/seed/status. "
                    "OUT/sweep.json records each run's state: run the same command again and finished runs are "
                    "kept, an interrupted one resumes from its checkpoint.",
        epilog="examples:\n"
               "  neurograph sweep --configs configs/experiments/inn_paper/*.yaml --seeds 3 "
               "--budget-tokens 2e6 --out runs/inn_paper\n"
               "  neurograph sweep --configs a.yaml b.yaml --budget-minutes 10 --set data.path=data/text8 --out runs/ab")
    p.add_argument("--configs", nargs="+", required=True, metavar="YAML", help="run configurations (one row each)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per config (trainer.seed = 0, 1, ...)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-tokens", type=lambda v: int(float(v)), default=None,
                        help="training tokens per run (trainer.max_steps from each config's tokens per step)")
    budget.add_argument("--budget-minutes", type=float, default=None,
                        help="minutes of training per run (stopped with SIGTERM: it checkpoints and ends)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every config")
    p.add_argument("--out", required=True, help="sweep directory: sweep.json and one run directory per run")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the --out directory's name)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite OUT/mlflow.db)")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="run as Ray tasks on this cluster (auto: the "
                                                                     "running one)")
    p.set_defaults(func=cmd_sweep)
