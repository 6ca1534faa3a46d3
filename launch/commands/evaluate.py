"""`neurograph eval`: a trained run's loss, perplexity and (character vocabularies) bits per
character on one split, computed by the trainer's own `evaluate` in one process. With the run's
data and `trainer.eval_batches` it reads the batches the training run evaluated (the loader's
global batch does not depend on the number of processes), so it reproduces the logged val/loss."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch.distributed as dist

from ..config import ConfigError
from ..inference import add_run_options


def cmd_eval(args) -> int:
    from neurograph.data_pipeline import StreamingTokenLoader, load_manifest
    from neurograph.trainer.evaluation import evaluate

    from ..inference import load_trained_model

    if not (Path(args.run) / "config.yaml").is_file():
        raise ConfigError(f"--run {args.run}: not a training run directory (no config.yaml)")
    if args.batches is not None and args.batches < 0:
        raise ConfigError(f"--batches must be >= 0, got {args.batches}")
    try:
        model, _, cfg = load_trained_model(args.run, args.checkpoint)
    except FileNotFoundError as err:
        raise ConfigError(f"--checkpoint {args.checkpoint}: {err}") from None
    data = cfg.data.model_copy(update={"path": args.data, "mixture": []}) if args.data else cfg.data
    tokenizer = load_manifest(data.path)["tokenizer"]
    if tokenizer["vocab_size"] > cfg.model.vocab_size:
        raise ConfigError(f"--data {data.path}: vocabulary of {tokenizer['vocab_size']} does not fit the model's "
                          f"{cfg.model.vocab_size}")
    batches = cfg.trainer.eval_batches if args.batches is None else args.batches
    loader = StreamingTokenLoader.from_config(data, split=args.split, micro_batch_size=cfg.trainer.micro_batch_size
                                              * cfg.world_size, rank=0, world_size=1, seed=cfg.trainer.seed,
                                              loop=False, max_batches=batches or None)
    owned = not dist.is_initialized()  # evaluate() all-reduces: a group of one
    if owned:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        metrics = evaluate(model, loader, tokenizer["kind"] == "char")
    finally:
        if owned:
            dist.destroy_process_group()
    out = {"run": str(Path(args.run).resolve()), "checkpoint": args.checkpoint, "data": str(data.path),
           "split": args.split, "batches": batches,
           **{k.replace("val/", f"{args.split}/"): v for k, v in metrics.items()}}
    print(json.dumps(out, indent=2))
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("eval", help="loss, perplexity (and bits per character) of a trained run on a data split, "
                                     "as JSON on stdout")
    add_run_options(ev)
    ev.add_argument("--data", default=None, metavar="DIR",
                    help="prepared data directory with the run's tokenizer (default: the run's data.path)")
    ev.add_argument("--split", choices=("val", "train"), default="val", help="split to evaluate")
    ev.add_argument("--batches", type=int, default=None,
                    help="global micro-batches to read (default: the run's trainer.eval_batches; 0: the whole split)")
    ev.set_defaults(func=cmd_eval)
