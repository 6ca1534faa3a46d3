"""`metrics.jsonl` in the run directory: one JSON record per step, written by rank 0."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

METRICS_FILE = "metrics.jsonl"


class MetricsFile:
    """The records of a run up to its current step. Opening it at `step` (a resume) or truncating it
    (a rollback) drops later records from the file: those steps are computed again."""

    def __init__(self, run_dir: Path, step: int, writer: bool):
        self.path, self.writer = Path(run_dir) / METRICS_FILE, writer
        self.records: list[dict] = []
        self.truncate(step)

    def truncate(self, step: int) -> None:
        if not self.writer:
            return
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.records = [r for r in map(_parse, lines) if r is not None and r["step"] <= step]
        if self.path.exists():
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict) -> None:
        if not self.writer:
            return
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _parse(line: str) -> Optional[dict]:
    try:
        return json.loads(line)
    except ValueError:  # the last line of a process killed while writing it
        return None
