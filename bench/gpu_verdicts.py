"""One verdict line per GPU goal of issue 26 (met / not met / not run), read from what bench/gpu_check.sh
wrote into its output folder: kernels.txt and training.txt (bench/kernels.py's tables), inl_1.1b.json.

Usage: python bench/gpu_verdicts.py OUT_DIR"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

MFU_GOAL, INTEGRATOR_GOAL, SCAN_BANDWIDTH_GOAL, SCAN_VS_MAMBA_GOAL, INN_STEP_GOAL = 0.40, 1.5, 60.0, 1.25, 3.0


def op_rows(text: str) -> dict[tuple[str, str], dict]:
    """(op, impl) -> {"ms", "bw"} of the measured rows of bench/kernels.py's op table (op names fill 28 columns)."""
    rows = {}
    for line in text.splitlines():
        fields = line[28:].split()
        if len(fields) >= 4 and fields[1].replace(".", "", 1).isdigit():
            rows[(line[:28].strip(), fields[0])] = {"ms": float(fields[1]), "bw": fields[3].rstrip("%")}
    return rows


def read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def verdict(goal: str, met: Optional[bool], detail: str) -> str:
    return f"{goal}: {'not run' if met is None else 'met' if met else 'not met'} ({detail})"


def verdicts(out: Path) -> list[str]:
    lines = []
    rows = json.loads(read(out / "inl_1.1b.json") or "[]")
    measured = [r for r in rows if "mfu" in r]
    best = max(measured, key=lambda r: r["mfu"], default=None)
    lines.append(verdict(f"1.1B INL >= {MFU_GOAL:.0%} MFU (bf16, planner's micro-batch)",
                         None if best is None else best["mfu"] >= MFU_GOAL,
                         "no measured row" if best is None else ", ".join(
                             f"{r['integrator_impl']} {r['mfu']:.1%}" if "mfu" in r else f"{r['integrator_impl']} failed"
                             for r in rows) + f" on {best['device']}"))

    ops = op_rows(read(out / "kernels.txt"))
    widths = ("integrator (K iters, D=128)", "integrator (K iters, D=1728)")
    ratios = {w: ops[(w, "compiled")]["ms"] / ops[(w, "triton")]["ms"] for w in widths
              if (w, "compiled") in ops and (w, "triton") in ops}
    lines.append(verdict(f"Triton integrator >= {INTEGRATOR_GOAL}x the compiled loop",
                         None if len(ratios) < len(widths) else min(ratios.values()) >= INTEGRATOR_GOAL,
                         ", ".join(f"{w.split(', ')[1][:-1]}: {r:.2f}x" for w, r in ratios.items()) or "rows missing"))

    scan, mamba = ops.get(("selective scan", "triton")), ops.get(("selective scan", "mamba-ssm"))
    bandwidth = float(scan["bw"]) if scan and scan["bw"] != "n/a" else None
    vs_mamba = scan["ms"] / mamba["ms"] if scan and mamba else None
    met = None if bandwidth is None and vs_mamba is None else (
        (bandwidth or 0) >= SCAN_BANDWIDTH_GOAL or (vs_mamba is not None and vs_mamba <= SCAN_VS_MAMBA_GOAL))
    lines.append(verdict(f"Triton scan >= {SCAN_BANDWIDTH_GOAL:.0f}% of peak bandwidth or within "
                         f"{SCAN_VS_MAMBA_GOAL}x of mamba-ssm", met,
                         f"{bandwidth}% of peak, " + (f"{vs_mamba:.2f}x mamba-ssm's time" if vs_mamba else "no mamba-ssm row")
                         if scan else "row missing"))

    step = next((line.split()[-1] for line in read(out / "training.txt").splitlines()
                 if line.startswith("INN paper (text8)") and line.rstrip().endswith("x")), None)
    lines.append(verdict(f"INN paper training step >= {INN_STEP_GOAL:.0f}x its eager step",
                         None if step is None else float(step[:-1]) >= INN_STEP_GOAL,
                         f"{step} with the kernels" if step else "row missing"))
    return lines


if __name__ == "__main__":
    print("\n".join(verdicts(Path(sys.argv[1]))))
