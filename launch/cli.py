"""The `neurograph` command line: the commands of launch/commands/, documented (launch/cli_docs.py)."""
from __future__ import annotations

import argparse
import sys

from .cli_docs import document
from .commands import COMMANDS
from .config import ConfigError
from .logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurograph", description="Pretrain neuron-graph language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_command(sub)
    parser.add_argument("--verbose", action="store_true", help="log every rank and dependencies' messages")
    return document(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbose_flag=args.verbose)
    from neurograph.data_pipeline.errors import DataError

    try:
        return args.func(args) or 0
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2



if __name__ == "__main__":
    sys.exit(main())
