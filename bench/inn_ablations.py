"""INN ablations and baselines at a reduced size, trained side by side on one corpus.

    .venv/bin/python bench/inn_ablations.py [--steps 300] [--corpus ../shared/data/shakespeare.txt.xz]

Each config in configs/ (the paper's recipe: AdamW 4e-4, OneCycle, clip 1.0) is trained with
`neurograph train` at a size that runs at a useful speed on CPU (INN: N=8, D=64, L=2), on
the same Text8-normalised corpus (27 symbols), for the same number of steps. Prints one table
(final train loss, validation BPC, tokens/s, diverged?) and writes a PNG of the curves.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SMALL_INN = ["model.d_model=64", "model.n_neurons=8", "model.n_layer=2", "model.n_head=2", "model.d_state=8",
             "model.checkpoint_layers=false"]
RUNS = {  # name -> (config, size overrides)
    "INN (dense, identity)": ("inn_text8.yaml", SMALL_INN),
    "INN symmetric (authors')": ("inn_text8_symmetric.yaml", SMALL_INN),
    "INN no communication": ("inn_text8_no_comm.yaml", SMALL_INN),
    "INN static communication": ("inn_text8_static.yaml", SMALL_INN),
    "INN topk (k=4)": ("inn_text8_topk.yaml", SMALL_INN + ["model.topk=4"]),
    "INN hierarchical (G=4)": ("inn_text8_hierarchical.yaml", SMALL_INN + ["model.group_size=4"]),
    "Transformer": ("transformer_text8.yaml", ["model.d_model=96", "model.n_layer=3", "model.d_ff=384",
                                               "model.max_seq_len=128"]),
    "LSTM": ("lstm_text8.yaml", ["model.d_model=192"]),
    "Mamba stack": ("mamba_text8.yaml", ["model.d_model=96", "model.n_layer=4", "model.d_state=8"]),
}


def prepare(corpus: Path, out: Path) -> Path:
    from neurograph.data_pipeline import prepare_corpus

    if not (out / "manifest.json").exists():
        prepare_corpus([str(corpus)], out, tokenizer="char", normalize="text8", seq_len=128, val_fraction=0.05,
                       samples_per_shard=64)
    return out


def run(name: str, config: str, sizes: list[str], data: Path, root: Path, steps: int) -> list[dict]:
    run_dir = root / name.split(" (")[0].lower().replace(" ", "_").replace("'", "")
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists() or len(metrics.read_text().splitlines()) < steps:
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        cmd = [sys.executable, "-m", "neurograph.launch.cli", "train", "--config", str(ROOT / "configs" / config), *sizes,
               f"data.path={data}", "data.seq_len=128", "data.num_workers=0", f"trainer.run_dir={run_dir}",
               f"trainer.max_steps={steps}", "trainer.micro_batch_size=8", "trainer.num_processes=1",
               f"trainer.eval_every={steps // 3}", "trainer.eval_batches=16", "trainer.checkpoint_every=0",
               f"trainer.log_every={max(1, steps // 10)}", "deepspeed.zero_stage=0", "tracking.experiment=ablations"]
        print(f"training {name} ...", flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in metrics.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "shakespeare.txt.xz"))
    parser.add_argument("--out", default="runs/ablations")
    args = parser.parse_args()
    root = Path(args.out).resolve()
    data = prepare(Path(args.corpus), root / "data")
    results = {}
    for name, (config, sizes) in RUNS.items():
        t0 = time.time()
        results[name] = (run(name, config, sizes, data, root, args.steps), time.time() - t0)

    from neurograph.launch.config import load_config
    from neurograph.model import build_model

    print(f"\nINN ablations and baselines: {args.steps} steps x 8 x 128 characters, Text8-normalised "
          f"{Path(args.corpus).name}, AdamW 4e-4 OneCycle, clip 1.0")
    print(f"{'run':<28}{'params':>11}{'train loss':>12}{'val BPC':>10}{'tok/s':>9}  diverged")
    for name, (records, _) in results.items():
        config, sizes = RUNS[name]
        cfg = load_config(ROOT / "configs" / config, sizes + [f"data.path={data}", "data.seq_len=128"])
        params = sum(p.numel() for p in build_model(cfg.model).parameters())
        last = records[-1]
        speeds = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r]
        diverged = not math.isfinite(last["train/loss"]) or last["train/loss"] > records[0]["train/loss"]
        print(f"{name:<28}{params:>11,}{last['train/loss']:>12.4f}{last.get('val/bpc', float('nan')):>10.3f}"
              f"{sorted(speeds)[len(speeds) // 2]:>9,.0f}  {'yes' if diverged else 'no'}")
    plot(results, root / "ablations.png")
    print(f"\ncurves: {root / 'ablations.png'}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, (records, _) in results.items():
        train_ax.plot([r["step"] for r in records], [r["train/loss"] / math.log(2) for r in records], label=name, lw=1)
        evals = [r for r in records if "val/bpc" in r]
        val_ax.plot([r["step"] for r in evals], [r["val/bpc"] for r in evals], marker="o", label=name)
    train_ax.set(title="training loss (bits per character)", xlabel="step", ylabel="BPC")
    val_ax.set(title="validation BPC", xlabel="step")
    val_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
