"""Entry point of one training rank: `python -m launch.worker RUN_CONFIG [--resume=TAG]`."""
from __future__ import annotations

import argparse
import logging
import os
import sys

import torch.distributed as dist

# DeepSpeed's autotuner, imported with DeepSpeed and never used here, imports MLflow when it is
# installed (~3 s of CPU in every rank): import the trainer with MLflow hidden (tracking imports it later).
_HIDE_MLFLOW = "mlflow" not in sys.modules
if _HIDE_MLFLOW:
    sys.modules["mlflow"] = None  # `import mlflow` raises ImportError
from neurograph.trainer.trainer import train  # noqa: E402
from neurograph.trainer.nonfinite import NonFiniteError  # noqa: E402
from neurograph.trainer.preemption import Stopped, exit_code  # noqa: E402

if _HIDE_MLFLOW:
    del sys.modules["mlflow"]

from .allocator import malloc_in_use
from .config import load_config
from .local import LAUNCHED_BY_NEUROGRAPH
from .logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", help="the run's resolved config.yaml")
    parser.add_argument("--resume", default=None, help="checkpoint to continue from: latest, a step or a tag")
    args = parser.parse_args(argv)
    setup_logging(rank=int(os.environ.get("RANK", 0)), fmt="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("neurograph.launch").info("malloc: %s", malloc_in_use())
    try:
        train(load_config(args.config), resume=args.resume)
    except Stopped as stopped:  # checkpointed on SIGINT/SIGTERM
        # Under `neurograph train` a clean exit keeps torchrun from killing the other ranks;
        # the launcher reports the signal in its own exit code.
        return 0 if os.environ.get(LAUNCHED_BY_NEUROGRAPH) else exit_code(stopped.signum)
    except NonFiniteError as err:  # trainer.on_nonfinite: the message says where and what was kept
        if dist.get_rank() == 0:
            logging.getLogger("neurograph.trainer").error("error: %s", err)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()  # CPU Adam aborts at exit otherwise
    return 0


if __name__ == "__main__":
    status = main()
    # Leave without the interpreter's teardown: with the process group destroyed and the run's files written,
    # a C++ destructor at exit still aborted ~3% of 2-rank ZeRO-3 runs on a loaded CPU ("terminate called without
    # an active exception", no Python frame left; torchrun then reports the rank failed).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
