"""`neurograph report`: a Markdown report with plots from a sweep's MLflow runs
(launch/experiments/report.py)."""
from __future__ import annotations

import argparse
from pathlib import Path


def cmd_report(args) -> int:
    from ..experiments.report import write_report

    print(write_report(args.experiment, args.tracking_uri, Path(args.out), [tuple(pair) for pair in args.compare]))
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="Markdown report with plots of a sweep, from its MLflow runs",
        description="Reads the runs of a sweep from MLflow alone: a table of final validation BPC (mean +/- std over "
                    "seeds), parameters, tokens, tokens/s and training time, diverged runs marked; PNG plots against "
                    "tokens and training time; each --compare adds a paired difference with its 95%% t interval.",
        epilog="examples:\n"
               "  neurograph report --experiment inn_paper --tracking-uri sqlite:///runs/inn_paper/sweep/mlflow.db "
               "--out docs/results/inn_paper --compare inn transformer --compare inn inn_no_comm")
    p.add_argument("--experiment", required=True, help="MLflow experiment of the sweep")
    p.add_argument("--tracking-uri", required=True, help="MLflow tracking URI the sweep logged to")
    p.add_argument("--out", required=True, help="directory for report.md and its PNG plots")
    p.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="two configs (file names without .yaml) to compare, paired by seed; repeat for more pairs")
    p.set_defaults(func=cmd_report)
