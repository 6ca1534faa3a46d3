"""Entry point of one training rank: `python -m launch.worker RUN_CONFIG [--resume=TAG]`."""
from __future__ import annotations

import argparse
import logging

import torch.distributed as dist

from trainer.loop import train

from .config import load_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--resume", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        train(load_config(args.config), resume=args.resume)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()  # CPU Adam aborts at exit otherwise


if __name__ == "__main__":
    main()
