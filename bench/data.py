"""Data pipeline benchmarks, one table in one run (CPU):

1. `prepare` throughput (input MB/s) with 1 and 2 workers, char and byte-level BPE tokenizers,
   on the shared public-domain corpora concatenated (~20 MB of text).
2. Loader tokens/s per process from local shards at the demo config's shape (micro-batch 8,
   seq_len 128; goal >= 50M tokens/s), and over what the demo model consumes when training at the
   same shape on one process (goal >= 20x).
3. Payload fraction of the default shards (token bytes / shard bytes; goal >= 95%).
4. A synthetic 1-billion-token shard set (written here, under --scratch, deleted after) streamed
   end to end through the loader; peak RSS at 10%, 50% and 100% of it (goal: flat within 10%).

Usage: .venv/bin/python bench/data.py [--scratch DIR] [--tokens 1e9] [--quick]
"""
from __future__ import annotations

import argparse
import json
import lzma
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


from neurograph.data_pipeline import StreamingTokenLoader, prepare_corpus
from neurograph.data_pipeline.manifest import FORMAT_VERSION, MANIFEST
from neurograph.data_pipeline.shards import write_shard

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEMO_SHAPE = dict(micro_batch_size=8, seq_len=128)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def corpus(scratch: Path, quick: bool) -> Path:
    path = scratch / "corpus.txt"
    with open(path, "w", encoding="utf-8") as out:
        for name in sorted(SHARED.glob("*.txt.xz"))[: 2 if quick else None]:
            with lzma.open(name, "rt", encoding="utf-8") as f:
                out.write(f.read())
    return path


def bench_prepare(src: Path, scratch: Path) -> list[tuple]:
    mb = src.stat().st_size / 1e6
    rows = []
    for kind, extra in (("char", {}), ("bpe", {"vocab_size": 8000})):
        for workers in (1, 2):
            out = scratch / f"prep-{kind}-{workers}"
            t0 = time.perf_counter()
            prepare_corpus([str(src)], out, tokenizer=kind, seq_len=256, workers=workers, **extra)
            dt = time.perf_counter() - t0
            rows.append((f"prepare {kind}, {workers} worker(s)", f"{mb / dt:.2f} MB/s", f"{mb:.1f} MB in {dt:.1f} s"))
    return rows


def loader_rate(data: Path, batches: int) -> float:
    loader = StreamingTokenLoader(data, seed=0, **DEMO_SHAPE)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    return batches * batch.numel() / (time.perf_counter() - t0)


def demo_model_rate(steps: int) -> float:
    import yaml

    from neurograph.model import build_model, parse_model_config

    section = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / "demo.yaml").read_text())["model"]
    model = build_model(parse_model_config({**section, "vocab_size": 84}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 84, (DEMO_SHAPE["micro_batch_size"], DEMO_SHAPE["seq_len"] + 1))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, 84), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * x.numel() / (time.perf_counter() - t0)


def payload_fraction(data: Path) -> float:
    m = json.loads((data / MANIFEST).read_text())
    shards = m["splits"]["train"]["shards"] + m["splits"]["val"]["shards"]
    itemsize = np.dtype(m["dtype"]).itemsize
    return sum(s["samples"] for s in shards) * (m["seq_len"] + 1) * itemsize / sum(s["bytes"] for s in shards)


def synthetic_dataset(root: Path, tokens: float, seq_len: int = 256, per_shard: int = 4096) -> Path:
    """Random uint16 shards holding `tokens` tokens (train) and one val shard; written fast."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n_samples = int(tokens // seq_len)
    splits = {}
    for split, count in (("train", n_samples), ("val", per_shard)):
        shards = []
        for index, start in enumerate(range(0, count, per_shard)):
            rows = rng.integers(0, 50_000, size=(min(per_shard, count - start), seq_len + 1), dtype=np.uint16)
            shards.append(write_shard(root, split, index, rows))
        splits[split] = {"samples": count, "tokens": count * seq_len, "shards": shards}
    manifest = {"format_version": FORMAT_VERSION, "seq_len": seq_len, "dtype": "uint16", "splits": splits,
                "tokenizer": {"kind": "synthetic", "vocab_size": 50_000, "file": None}}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


def stream_all(data: Path) -> list[tuple]:
    """One epoch of the training split through the loader; RSS at 10%, 50%, 100%."""
    loader = StreamingTokenLoader(data, micro_batch_size=64, seed=0)
    total = json.loads((data / MANIFEST).read_text())["splits"]["train"]["samples"]
    batches = total // 64
    marks = {int(batches * f) - 1: f for f in (0.1, 0.5, 1.0)}
    rows, seen, t0 = [], 0, time.perf_counter()
    for k, batch in enumerate(loader):
        seen += batch.numel()
        if k in marks:
            rows.append((f"1B-token stream: RSS at {marks[k]:.0%}", f"{rss_mb():.0f} MB",
                         f"{seen / 1e9:.2f}B tokens, {seen / (time.perf_counter() - t0) / 1e6:.0f}M tokens/s"))
        if k + 1 == batches:
            break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", default=None, help="directory for the corpora and shard sets (default: a temp dir)")
    parser.add_argument("--tokens", type=float, default=1e9, help="size of the synthetic shard set")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    scratch = Path(tempfile.mkdtemp(prefix="ng-bench-data-", dir=args.scratch))
    try:
        src = corpus(scratch, args.quick)
        rows = bench_prepare(src, scratch)
        data = scratch / "prep-char-1"
        demo = prepare_corpus([str(src)], scratch / "demo-shape", seq_len=128)  # defaults at the demo's length
        loader = loader_rate(scratch / "demo-shape", 500 if args.quick else 20_000)
        model = demo_model_rate(3 if args.quick else 20)
        rows += [("loader, demo shape (8 x 128), 1 process", f"{loader / 1e6:.1f}M tokens/s", "goal >= 50M"),
                 ("demo Transformer training, same shape", f"{model / 1e3:.1f}k tokens/s", "AdamW step, 2 threads"),
                 ("loader / model consumption", f"{loader / model:.0f}x", "goal >= 20x"),
                 ("payload fraction, default shards", f"{payload_fraction(data):.2%}", "goal >= 95%"),
                 ("payload fraction, demo-shape shards", f"{payload_fraction(scratch / 'demo-shape'):.2%}",
                  f"{len(demo['splits']['train']['shards'])} train shards")]
        t0 = time.perf_counter()
        synthetic = synthetic_dataset(scratch / "synthetic", 2e7 if args.quick else args.tokens)
        rows.append(("synthetic shard set written", f"{time.perf_counter() - t0:.0f} s",
                     f"{sum(p.stat().st_size for p in synthetic.iterdir()) / 1e9:.2f} GB"))
        rows += stream_all(synthetic)
        rows.append(("peak RSS of this process", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", ""))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'measure':<{width}}{'value':>18}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}{value:>18}  {note}")


if __name__ == "__main__":
    main()
