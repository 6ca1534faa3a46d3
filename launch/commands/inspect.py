"""`neurograph inspect`: what a trained INN's neurons and routing graph became (against the
untrained model) or how an INL iterates, as PNG heat maps and a JSON summary
(launch/experiments/inspection.py)."""
from __future__ import annotations

import argparse

from ..inference import add_run_options


def cmd_inspect(args) -> int:
    from ..experiments.inspection import inspect_run, summary_lines

    print("\n".join(summary_lines(inspect_run(args.run, args.out, args.checkpoint, args.sequences), args.out)))
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    ins = subparsers.add_parser("inspect", help="neuron statistics and routing graph of a trained INN, or iterations "
                                                "and controller of an INL, on held-out text (PNG + JSON)")
    add_run_options(ins, "run directory of an INN or INL model (trainer.run_dir)")
    ins.add_argument("--out", required=True, metavar="DIR", help="folder for summary.json and the PNG figures")
    ins.add_argument("--sequences", type=int, default=8,
                     help="held-out samples to run (the first of the run's validation split)")
    ins.set_defaults(func=cmd_inspect)
