"""`neurograph data prepare` and `neurograph data verify`."""
from __future__ import annotations

import argparse
import json
import logging

PREPARE_EXAMPLES = """examples:
  neurograph data prepare --input corpus.txt.xz --out data/novel
  neurograph data prepare --input 'web/*.jsonl.gz' --out data/web --tokenizer bpe --vocab-size 50257 \\
      --special-tokens '<USER>,<ASSISTANT>,<SYSTEM>,<ERROR>' --seq-len 2048 --workers 8
  neurograph data prepare --input s3://bucket/raw/*.txt --out s3://bucket/prepared --tokenizer hf:gpt2/"""

VERIFY_EXAMPLES = """examples:
  neurograph data verify --data data/novel
  neurograph data verify --data s3://bucket/prepared --json"""


def add_command(subparsers: argparse._SubParsersAction) -> None:
    subparsers = subparsers.add_parser("data", help="prepare and verify token shards").add_subparsers(
        dest="data_command", required=True)
    p = subparsers.add_parser(
        "prepare", help="tokenize text into compact WebDataset shards + manifest.json",
        description="Stream text inputs, tokenize them on --workers processes, pack fixed-length samples into "
                    "checksummed WebDataset shards, and publish the directory atomically.",
        epilog=PREPARE_EXAMPLES)
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help=".txt/.jsonl/.parquet files, globs or URLs (s3://, https://), optionally .xz/.gz/.bz2/.zst")
    p.add_argument("--out", required=True, metavar="DIR", help="output data directory or URL")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out (the old dataset stays until the new one is complete)")
    p.add_argument("--tokenizer", default="char", metavar="KIND",
                   help="char, sentencepiece, bpe (byte-level BPE, GPT-2 style) or hf:PATH (an existing tokenizer.json "
                        "or a saved Hugging Face tokenizer folder)")
    p.add_argument("--vocab-size", type=int, default=8000,
                   help="vocabulary of a trained sentencepiece/bpe tokenizer, EOS included; --special-tokens come on top")
    p.add_argument("--sp-model-type", choices=("bpe", "unigram"), default="bpe", help="sentencepiece model type")
    p.add_argument("--special-tokens", default="", metavar="LIST",
                   help="comma-separated tokens reserved as single ids that never split, e.g. "
                        "'<USER>,<ASSISTANT>,<SYSTEM>,<ERROR>'")
    p.add_argument("--eos-token", default="auto",
                   help="token ending every document; auto: <|endoftext|> (none with --normalize text8); "
                        "'none' to join documents by a blank line instead")
    p.add_argument("--normalize", choices=("none", "text8"), default="none",
                   help="text8: lower-case a-z and single spaces only")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sample (each stores seq_len + 1)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of the corpus (a seeded sample of blocks of samples) kept for validation")
    p.add_argument("--samples-per-shard", type=int, default=4096, help="samples per shard file")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (output is identical for any number)")
    p.add_argument("--seed", type=int, default=0, help="seeds the validation sample and tokenizer training")
    p.add_argument("--jsonl-field", default="text", help="field holding the text in .jsonl inputs")
    p.set_defaults(func=_prepare)

    v = subparsers.add_parser(
        "verify", help="check every shard: size, sha256, contents, token range",
        description="Read every shard as the loader does and report every bad one (exit 2).", epilog=VERIFY_EXAMPLES)
    v.add_argument("--data", required=True, metavar="DIR", help="prepared data directory or URL")
    v.add_argument("--json", action="store_true", help="print the counts as JSON")
    v.set_defaults(func=_verify)


def _prepare(args) -> None:
    from neurograph.data_pipeline.prepare import prepare_corpus

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    eos = None if args.eos_token.lower() == "none" else args.eos_token
    specials = [t.strip() for t in args.special_tokens.split(",") if t.strip()]
    m = prepare_corpus(
        args.input, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size, sp_model_type=args.sp_model_type,
        normalize=args.normalize, seq_len=args.seq_len, val_fraction=args.val_fraction,
        samples_per_shard=args.samples_per_shard, seed=args.seed, jsonl_field=args.jsonl_field,
        special_tokens=specials, eos_token=eos, workers=args.workers, overwrite=args.overwrite,
    )
    train, val = m["splits"]["train"], m["splits"]["val"]
    print(f"prepared {args.out}: {m['tokenizer']['kind']} vocab {m['tokenizer']['vocab_size']}, seq_len {m['seq_len']}, "
          f"train {train['samples']} samples / {len(train['shards'])} shards, val {val['samples']} samples / {len(val['shards'])} shards")


def _verify(args) -> None:
    from neurograph.data_pipeline.manifest import verify

    r = verify(args.data)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"verified {args.data}: {r['shards']} shards, {r['samples']} samples, {r['tokens']} tokens, {r['bytes']} bytes OK")
