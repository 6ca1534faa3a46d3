"""Trainer overhead: `neurograph train` against a bare PyTorch loop, same model, cores and global batch.

    .venv/bin/python bench/trainer.py [--steps 300] [--warmup 100] [--rounds 2]

The trainer runs configs/demo.yaml as shipped (2 processes on the 2 cores, ZeRO-2, micro-batch 8 x 2
accumulation steps, seq 128, MLflow tracking to the run's sqlite store, checkpoint at the end) on the
bundled Shakespeare prepared with defaults; its tokens/s is its logged intervals' tokens over their
time after the warm-up (a demo run speeds up over its first ~100 steps). It runs without
OMP_NUM_THREADS, so the launcher gives each rank its share of the cores. The bare loop is what a
competent engineer writes for one machine: one process using every core (torch threads = cores),
the same model, AdamW with the same settings and clipping, one batch of the same 32 sequences per
step, on jemalloc like the trainer's workers. Each side runs in
its own process, one after the other, `--rounds` times; the table takes each side's best round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from neurograph.data_pipeline import DEMO_CORPUS, prepare_corpus
from neurograph.launch.allocator import with_allocator
from neurograph.launch.commands.demo import SHIPPED_CONFIGS
from neurograph.model import build_model, parse_model_config

def demo_config() -> dict:
    return yaml.safe_load((SHIPPED_CONFIGS / "demo.yaml").read_text())


def trainer_tokens_per_s(data: Path, root: Path, steps: int, warmup: int) -> float:
    run = root / f"run{time.monotonic_ns()}"
    cmd = [str(Path(sys.executable).parent / "neurograph"), "train", "--config", str(SHIPPED_CONFIGS / "demo.yaml"),
           f"data.path={data}", f"trainer.run_dir={run}", f"trainer.max_steps={steps}", "trainer.log_every=10",
           "trainer.eval_every=0", "trainer.checkpoint_every=0"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=3600, env=env)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r and warmup < r["step"] < steps]
    return statistics.harmonic_mean(rates)  # equal tokens per interval: total tokens / total time


def bare_loop_child(steps: int, warmup: int, vocab: int) -> None:
    """One process, every core: the same model, optimizer and global batch as the demo config."""
    cfg = demo_config()
    t, seq = cfg["trainer"], cfg["data"]["seq_len"]
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = build_model(parse_model_config({**cfg["model"], "vocab_size": vocab}))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]}, {"params": rest, "weight_decay": 0}],
                            lr=t["lr"])
    batch = t["micro_batch_size"] * t["grad_accum_steps"] * t["num_processes"]
    ids = torch.randint(0, vocab, (steps, batch, seq + 1))
    start = 0.0
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        logits = model(ids[step, :, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[step, :, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        loss.item()  # the loop reads its loss, as any training loop that logs does
    print(json.dumps({"tokens_per_s": (steps - warmup) * batch * seq / (time.perf_counter() - start)}))


def bare_tokens_per_s(steps: int, warmup: int, vocab: int) -> float:
    env = with_allocator({k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, "jemalloc")
    out = subprocess.run([sys.executable, __file__, "--bare-child", str(vocab), "--steps", str(steps),
                          "--warmup", str(warmup)], env=env, check=True,
                         capture_output=True, text=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate on every core: the achievable rate beside the ratio."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="steps per run")
    ap.add_argument("--warmup", type=int, default=100, help="first steps left out of both measurements")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each side; the best of each is compared")
    ap.add_argument("--bare-child", type=int, default=None, metavar="VOCAB", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_child is not None:
        bare_loop_child(args.steps, args.warmup, args.bare_child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        vocab = prepare_corpus([str(DEMO_CORPUS)], data, tokenizer="char",
                               seq_len=demo_config()["data"]["seq_len"])["tokenizer"]["vocab_size"]
        trainer, bare = [], []
        for _ in range(args.rounds):
            trainer.append(trainer_tokens_per_s(data, Path(tmp), args.steps, args.warmup))
            bare.append(bare_tokens_per_s(args.steps, args.warmup, vocab))
    print(f"machine: {os.cpu_count()} cores, fp32 matmul {matmul_gflops():.0f} GFLOP/s (1024^3, all cores)")
    print("| loop | tokens/s per round | best |")
    print("| --- | --- | --- |")
    print(f"| `neurograph train` (demo.yaml: 2 ranks, ZeRO-2) | {', '.join(f'{x:,.0f}' for x in trainer)} | "
          f"{max(trainer):,.0f} |")
    print(f"| bare PyTorch loop (1 process, all cores) | {', '.join(f'{x:,.0f}' for x in bare)} | {max(bare):,.0f} |")
    print(f"trainer / bare = {max(trainer) / max(bare):.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
