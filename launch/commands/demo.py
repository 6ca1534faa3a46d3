"""`neurograph demo`: prepare the bundled Shakespeare, train configs/demo.yaml on 2 processes, sample. A run
root that already holds checkpoints is continued from the newest one that verifies."""
from __future__ import annotations

import argparse
import importlib.resources as resources
from pathlib import Path

from ..config import load_config, resolved, save_config

SHIPPED_CONFIGS = Path(str(resources.files("neurograph.configs")))  # configs/, also in a wheel


def cmd_demo(args) -> int:
    from neurograph.data_pipeline import DEMO_CORPUS, prepare_corpus

    root = Path(args.run_root)
    data_dir = root / "data"
    if not (data_dir / "manifest.json").exists():
        print(f"preparing the demo corpus (Shakespeare, characters) into {data_dir}")
        prepare_corpus([str(DEMO_CORPUS)], data_dir, tokenizer="char", seq_len=128)
    run_dir = root / "run"
    overrides = [f"data.path={data_dir}", f"trainer.run_dir={run_dir}", *args.overrides]
    cfg = resolved(load_config(SHIPPED_CONFIGS / "demo.yaml", overrides))
    from neurograph.trainer.checkpoint import LATEST, CheckpointManager

    from ..resume import checked_resume

    checkpoints = CheckpointManager(run_dir / "checkpoints")
    resume = None
    if checkpoints.published():  # verified as `train --resume` does: the newest checkpoint that verifies
        resume = checked_resume(cfg, checkpoints, LATEST, allow_config_change=False)
        print(f"{run_dir} already has checkpoints: continuing it from {resume} (delete it for a fresh run)")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    from ..local import launch_local

    code = launch_local(cfg, run_dir / "config.yaml", resume)
    if code == 0:
        run_id = (run_dir / "mlflow_run_id").read_text().strip()
        db = run_dir / "mlflow.db"
        import torch

        from ..inference import encode_prompt, load_trained_model

        model, tokenizer, _ = load_trained_model(run_dir)
        sample = model.generate(encode_prompt(tokenizer, "ROMEO:"), 200, temperature=0.8, do_sample=True,
                                generator=torch.Generator().manual_seed(0))
        print("\nsample:\n" + tokenizer.decode(sample[0].tolist()))
        print("\ndemo finished")
        print(f"  checkpoint : {checkpoints.root / checkpoints.latest_tag()}")
        print(f"  metrics    : {run_dir / 'metrics.jsonl'}")
        print(f"  MLflow run : {run_id} in sqlite:///{db}")
        print(f"  MLflow UI  : .venv/bin/mlflow ui --backend-store-uri sqlite:///{db} --port 5000   "
              "(then open http://127.0.0.1:5000)")
    return code


def add_command(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="prepare Shakespeare and train a small char model on 2 processes")
    demo.add_argument("--run-root", default="runs/demo", metavar="DIR", help="where the data and the run go")
    demo.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides of configs/demo.yaml")
    demo.set_defaults(func=cmd_demo)
