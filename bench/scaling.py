"""Activation checkpointing and torch.compile on CPU: training tokens/s and peak memory, one table.

For the demo Transformer (configs/demo.yaml), the paper INN (configs/inn_text8.yaml) and the tiny
INL (configs/inl_tiny.yaml), each at its config's micro-batch and sequence length: eager, every
block checkpointed, compiled, both. A measurement is forward + backward + AdamW step, after
warm-up (compilation excluded), in a fresh process per cell so that peak memory (VmHWM above the
RSS before the first step) is its own.

Usage: .venv/bin/python bench/scaling.py [--steps 5] [--quick] [--only MODEL ...]   (--quick: 2 steps, micro-batch 2)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

FAMILIES = {"demo Transformer": "configs/demo.yaml", "paper INN": "configs/inn_text8.yaml",
            "tiny INL": "configs/inl_tiny.yaml"}
VARIANTS = {"eager": ("none", False), "checkpointing": ("layers", False), "compile": ("none", True),
            "checkpointing + compile": ("layers", True)}
VOCAB = 65  # Shakespeare characters (Text8: 27; the cost difference is the head only)


def status_kib(key: str) -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))


def measure(config: str, variant: str, steps: int, micro_batch: int | None) -> dict:
    """One cell, in this process: tokens/s and peak MiB above the start."""
    import torch
    import torch.nn.functional as F
    import yaml

    from neurograph.model import build_model
    from neurograph.trainer.acceleration import checkpoint_blocks, compile_blocks

    raw = yaml.safe_load((REPO / config).read_text())
    # the variant alone decides recomputation (the INN config's own `checkpoint_layers` is switched off)
    section = {**raw["model"], "vocab_size": VOCAB}
    if "checkpoint_layers" in section:
        section["checkpoint_layers"] = False
    model = build_model(section).train()
    mode, compiled = VARIANTS[variant]
    checkpoint_blocks(model, mode)
    if compiled:
        compile_blocks(model)
    mb, seq_len = micro_batch or raw["trainer"]["micro_batch_size"], raw["data"]["seq_len"]
    ids = torch.randint(0, VOCAB, (mb, seq_len + 1), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.float().reshape(-1, VOCAB), ids[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    step()  # warm-up: compilation, optimizer states, gradient buffers
    open("/proc/self/clear_refs", "w").write("5")  # peak := current RSS
    start = status_kib("VmRSS:")
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": steps * mb * seq_len / seconds, "peak_mib": (status_kib("VmHWM:") - start) / 1024,
            "micro_batch": mb, "seq_len": seq_len}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="measured steps per cell")
    parser.add_argument("--quick", action="store_true", help="2 steps at micro-batch 2 (a smoke run)")
    parser.add_argument("--cell", nargs=2, metavar=("CONFIG", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch", type=int, default=None, help="override the configs' micro-batch")
    parser.add_argument("--only", nargs="+", choices=list(FAMILIES), default=list(FAMILIES), metavar="MODEL",
                        help=f"models to measure (default: all of {', '.join(map(repr, FAMILIES))})")
    args = parser.parse_args()
    steps, mb = (2, 2) if args.quick else (args.steps, args.micro_batch)
    if args.cell:
        print(json.dumps(measure(*args.cell, steps, mb)))
        return
    print("| model | micro-batch x seq | variant | tokens/s | peak memory MiB |")
    print("| --- | --- | --- | ---: | ---: |")
    for family in args.only:
        config = FAMILIES[family]
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--cell", config, variant, "--steps", str(steps)]
            cmd += ["--quick"] if args.quick else (["--micro-batch", str(mb)] if mb else [])
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(f"| {family} | {out['micro_batch']} x {out['seq_len']} | {variant} | {out['tokens_per_s']:,.0f} | "
                  f"{out['peak_mib']:,.1f} |", flush=True)


if __name__ == "__main__":
    main()
