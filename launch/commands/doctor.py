"""`neurograph doctor [--ray ADDRESS]`: the environment a run depends on, and whether every node of a
Ray cluster has the same (launch/environment.py)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..environment import cluster_reports, collect, differences


def _print_report(report: dict[str, Any]) -> None:
    rows = [("python", f"{report['python']} ({report['executable']})"), ("platform", report["platform"])]
    rows += [(name, version or "not installed") for name, version in report["packages"].items()]
    rows += [("torch CUDA / NCCL", f"{report['torch_cuda'] or 'none (CPU build)'} / {report['nccl'] or 'none'}"),
             ("OpenMP (CPU kernels)", "yes" if report["openmp"] else "no"),
             ("C++ compiler", report["compiler"] or "none: the CPU kernels fall back to PyTorch (slower)"),
             ("jemalloc", report["jemalloc"] or "none: CPU training runs on glibc malloc (slower)")]
    rows += [("GPU", f"{g['name']}, {g['memory_gib']} GiB, compute capability {g['capability']}")
             for g in report["gpus"]] or [("GPUs", "none")]
    lock = report["lock"]
    if lock["file"] is None:
        rows.append(("lock", lock["note"]))
    else:
        rows += [("lock", f"{lock['file']} sha256 {lock['sha256'][:16]}"),
                 ("lock vs pyproject.toml", {True: "current", False: "STALE: run `make lock`",
                                             None: "not checked"}[lock["matches_pyproject"]]),
                 ("installed vs lock", "exactly the lock" if not lock["departures"]
                  else f"{len(lock['departures'])} departures: " + "; ".join(lock["departures"][:8]))]
    rows.append(("environment sha256", report["environment_sha256"][:16]))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def cmd_doctor(args) -> int:
    report = collect()
    if args.ray is None:
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_report(report)
        return 0
    nodes = cluster_reports(args.ray)
    verdicts = {label: [node["error"]] if "error" in node else differences(node, report)
                for label, node in nodes.items()}
    if args.json:
        print(json.dumps({"driver": report, "nodes": nodes, "differences": verdicts}, indent=2))
    else:
        _print_report(report)
        print(f"\n{len(nodes)} nodes")
        for label, found in verdicts.items():
            print(f"  {label}: " + ("same as the driver" if not found else "DIFFERS: " + "; ".join(found)))
    return 1 if any(verdicts.values()) else 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    doctor = subparsers.add_parser("doctor", help="versions, lock, compiler, GPUs; --ray: the same on every node")
    doctor.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="a Ray cluster (auto, or host:port of its head): report every node, exit 1 if any "
                             "differs from this process")
    doctor.add_argument("--json", action="store_true", help="print JSON to stdout instead of a table")
    doctor.set_defaults(func=cmd_doctor)

