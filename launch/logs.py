"""Quiet by default: logs go to stderr (stdout is for program output: generated text, JSON),
rank 0 alone logs, and the known noise of dependencies is dropped at its source, each item by
message and module. `--verbose` (NEUROGRAPH_VERBOSE=1 in the ranks' environment) keeps all."""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings

VERBOSE_ENV = "NEUROGRAPH_VERBOSE"

# (category, message regex, module regex): repeated on every ZeRO-3 step, once per rank.
NOISY_WARNINGS = [
    (FutureWarning, r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
     r"torch\.distributed\.c10d_logger"),
]
# print()s of dependencies on stdout, one per rank (deepspeed.comm.torch builds its shared-memory op).
NOISY_PRINTS = [re.compile(r"DeepSpeed [\w.]+ built successfully")]
# start-up chatter at INFO: loggers kept at WARNING.
CHATTY_LOGGERS = ["mlflow.store.db.utils", "alembic.runtime.migration"]


class FilteredStream:
    """A text stream that drops whole lines matching `patterns` (and everything when `drop_all`)."""

    def __init__(self, stream, patterns: list[re.Pattern], drop_all: bool = False):
        self.stream, self.patterns, self.drop_all = stream, patterns, drop_all
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if not self.drop_all and not any(p.fullmatch(line) for p in self.patterns):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding, ...
        return getattr(self.stream, name)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def setup_logging(rank: int = 0, fmt: str = "%(message)s", datefmt: str | None = None,
                  verbose_flag: bool = False) -> None:
    """Configure this process's logging once; `verbose_flag` (the CLI's --verbose) is passed on to
    the processes it starts through the environment."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"
    if not _has_cuda():  # DeepSpeed would warn (on stdout) that it falls back to the CPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    loud = verbose()
    level = logging.INFO if rank == 0 or loud else logging.ERROR
    logging.basicConfig(level=level, format=fmt, datefmt=datefmt, stream=sys.stderr)
    logging.captureWarnings(True)  # Python warnings through logging: silent on ranks > 0 as well
    if loud:
        return
    for category, message, module in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not isinstance(sys.stdout, FilteredStream):
        sys.stdout = FilteredStream(sys.stdout, NOISY_PRINTS, drop_all=rank != 0)
