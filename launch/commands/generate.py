"""`neurograph generate`: sample text from a trained run's checkpoint."""
from __future__ import annotations

import argparse

from ..config import ConfigError
from ..inference import add_run_options, encode_prompt, load_run


def cmd_generate(args) -> int:
    import torch

    invalid = [name for name, ok in (("--max-new-tokens", args.max_new_tokens > 0),
                                     ("--temperature", args.temperature > 0),
                                     ("--top-k", args.top_k is None or args.top_k > 0),
                                     ("--top-p", args.top_p is None or 0 < args.top_p <= 1)) if not ok]
    if invalid:
        raise ConfigError(f"{invalid[0]} out of range (max-new-tokens, temperature, top-k > 0; 0 < top-p <= 1)")
    model, tokenizer = load_run(args.run, args.checkpoint)
    if not hasattr(model, "generate"):
        raise ConfigError(f"model.arch={model.cfg.arch} has no generate()")
    prompt = encode_prompt(tokenizer, args.prompt)
    if prompt.numel() == 0:
        raise ConfigError("--prompt encodes to no tokens")
    generator = torch.Generator().manual_seed(args.seed)
    out = model.generate(prompt, args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, do_sample=not args.greedy, generator=generator)
    print(tokenizer.decode(out[0].tolist()))
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser("generate", help="sample text from a trained run")
    add_run_options(gen)
    gen.add_argument("--prompt", required=True, help="text the sample continues (printed with it)")
    gen.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate")
    gen.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (> 0)")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set of mass >= p")
    gen.add_argument("--greedy", action="store_true", help="take the most likely token (no sampling)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same text)")
    gen.set_defaults(func=cmd_generate)
