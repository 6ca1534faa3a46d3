"""`neurograph config show`: every key's value, type, default, allowed values and meaning."""
from __future__ import annotations

import argparse
import json

from ..config import ConfigError, load_config
from ..config_doc import markdown, reference, text


def cmd_config_show(args) -> int:
    if args.overrides and not args.config:
        raise ConfigError("overrides need --config (the file they apply to)")
    cfg = load_config(args.config, args.overrides, check_data="if_prepared") if args.config else None
    rows = reference(cfg)
    if cfg is not None and cfg.model.vocab_size is None:  # no data yet: training takes it from them
        row = next(r for r in rows if r["key"] == "model.vocab_size")
        row["value"] = f"unset: the tokenizer of the prepared data at {cfg.data.sources[0]} decides"
    if args.json:
        print(json.dumps({r.pop("key"): r for r in rows}, indent=2))
    elif args.markdown:
        print(markdown(rows), end="")
    else:
        print(text(rows), end="")
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    sub = subparsers.add_parser("config", help="inspect configurations").add_subparsers(
        dest="config_command", required=True)
    show = sub.add_parser("show", help="the resolved configuration: every key's value, type, default, allowed values "
                                       "and description (without --config: the defaults of every section)")
    show.add_argument("--config", default=None, metavar="FILE", help="YAML config to resolve (validated)")
    form = show.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON object keyed by dotted key, to stdout")
    form.add_argument("--markdown", action="store_true", help="the README reference table")
    show.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides applied to --config")
    show.set_defaults(func=cmd_config_show)

