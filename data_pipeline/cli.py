"""`prepare` and `verify` subcommands, mounted by the main CLI (`neurograph data ...`)."""
from __future__ import annotations

import argparse
import logging


def add_data_commands(subparsers) -> None:
    """Add `prepare` and `verify` to an argparse subparsers object."""
    p = subparsers.add_parser("prepare", help="tokenize text files into WebDataset shards + manifest.json",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help=".txt/.jsonl/.parquet files, optionally .xz/.gz/.bz2/.zst compressed")
    p.add_argument("--out", required=True, metavar="DIR", help="output data directory")
    p.add_argument("--tokenizer", choices=("char", "sentencepiece"), default="char")
    p.add_argument("--vocab-size", type=int, default=8000, help="sentencepiece vocabulary size")
    p.add_argument("--sp-model-type", choices=("bpe", "unigram"), default="bpe")
    p.add_argument("--normalize", choices=("none", "text8"), default="none",
                   help="text8: lower-case a-z and single spaces only")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sample (each stores seq_len + 1)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="the last part of the token stream kept for validation")
    p.add_argument("--samples-per-shard", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jsonl-field", default="text", help="field holding the text in .jsonl inputs")
    p.set_defaults(func=_prepare)

    v = subparsers.add_parser("verify", help="check every shard's size and sha256 against manifest.json")
    v.add_argument("--data", required=True, metavar="DIR", help="prepared data directory")
    v.set_defaults(func=_verify)


def _prepare(args) -> None:
    from .prepare import prepare_corpus

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    m = prepare_corpus(
        args.input, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size, sp_model_type=args.sp_model_type,
        normalize=args.normalize, seq_len=args.seq_len, val_fraction=args.val_fraction,
        samples_per_shard=args.samples_per_shard, seed=args.seed, jsonl_field=args.jsonl_field,
    )
    train, val = m["splits"]["train"], m["splits"]["val"]
    print(f"prepared {args.out}: {m['tokenizer']['kind']} vocab {m['tokenizer']['vocab_size']}, seq_len {m['seq_len']}, "
          f"train {train['samples']} samples / {len(train['shards'])} shards, val {val['samples']} samples / {len(val['shards'])} shards")


def _verify(args) -> None:
    from .manifest import verify

    r = verify(args.data)
    print(f"verified {args.data}: {r['shards']} shards, {r['samples']} samples, {r['bytes']} bytes OK")
