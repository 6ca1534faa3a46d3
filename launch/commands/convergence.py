"""`neurograph convergence`: plot an INL model's integrator energy per layer and iteration (PNG)."""
from __future__ import annotations

import argparse

from ..config import ConfigError
from ..inference import add_run_options, encode_prompt, load_run


def cmd_convergence(args) -> int:
    from neurograph.model.inl_convergence import plot_convergence

    model, tokenizer = load_run(args.run, args.checkpoint)
    if model.cfg.arch != "inl":
        raise ConfigError(f"convergence plots need an INL model, the run has model.arch={model.cfg.arch}")
    ids = encode_prompt(tokenizer, args.prompt)
    path = plot_convergence(model, ids, args.out, tokens=[tokenizer.decode([i]) for i in ids[0].tolist()])
    print(f"wrote {path}")
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    conv = subparsers.add_parser("convergence", help="plot an INL model's integrator energy per layer and iteration (PNG)")
    add_run_options(conv, "run directory of an INL model (trainer.run_dir)")
    conv.add_argument("--prompt", required=True, help="text whose tokens are traced")
    conv.add_argument("--out", default="convergence.png", help="PNG file to write")
    conv.set_defaults(func=cmd_convergence)
