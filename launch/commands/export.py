"""`neurograph export hf`: a trained run as a self-contained Hugging Face folder (launch/export/)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ConfigError
from ..export.hf import export_hf, log_to_mlflow
from ..inference import add_run_options


def cmd_export_hf(args) -> int:
    chat_template = None
    if args.chat_template:
        path = Path(args.chat_template)
        if not path.is_file():
            raise ConfigError(f"--chat-template {path} not found")
        chat_template = path.read_text()
    out = export_hf(args.run, args.out, args.checkpoint, args.dtype, args.overwrite, chat_template, args.max_shard_size)
    print(f"exported {args.run} to {out}")
    if args.mlflow or args.register:
        run_id = log_to_mlflow(Path(args.run), out, args.register)
        print(f"logged to MLflow run {run_id}: " + (f"pyfunc model hf_pyfunc, a new version of model {args.register}"
                                                     if args.register else "artifact hf_model"))
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    sub = subparsers.add_parser("export", help="export a trained run (Hugging Face folder)").add_subparsers(
        dest="export_command", required=True)
    hf = sub.add_parser("hf", help="a trained run as a Hugging Face folder (AutoModelForCausalLM, trust_remote_code)")
    add_run_options(hf)
    hf.add_argument("--out", required=True, help="folder to write; must be empty or absent unless --overwrite")
    hf.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weight precision")
    hf.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    hf.add_argument("--chat-template", default=None, metavar="FILE",
                    help="Jinja chat template for the tokenizer (default: the run's export.chat_template)")
    hf.add_argument("--max-shard-size", default="5GB", help="split weights into safetensors shards of this size")
    hf.add_argument("--mlflow", action="store_true", help="log the folder as artifact hf_model of the run's MLflow run")
    hf.add_argument("--register", default=None, metavar="NAME",
                    help="log it as an MLflow pyfunc model (predict: prompts -> greedy continuations) of the run's "
                         "MLflow run and register it as a new version of model NAME")
    hf.set_defaults(func=cmd_export_hf)

