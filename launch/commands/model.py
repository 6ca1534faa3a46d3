"""`neurograph model summary`: parameters per component of a config's model, built on the meta device."""
from __future__ import annotations

import argparse
import json
import logging
import re
from collections import OrderedDict

from ..config import ConfigError, apply_overrides, read_yaml

log = logging.getLogger("neurograph")
ASSUMED_VOCAB = 256  # counted when neither the config nor prepared data give a vocabulary (a byte vocabulary)


def model_section(args) -> dict:
    """The `model` section of a config file (+ overrides), the vocabulary filled from the prepared data
    if unset, or assumed (with a warning) when there are no data yet."""
    raw = apply_overrides(read_yaml(args.config), args.overrides)
    if "model" not in raw:
        raise ConfigError(f"{args.config} has no `model` section")
    section = dict(raw["model"])
    if section.get("vocab_size") is None:
        from neurograph.data_pipeline import load_manifest

        path = raw.get("data", {}).get("path")
        try:
            section["vocab_size"] = load_manifest(path)["tokenizer"]["vocab_size"]
        except (TypeError, FileNotFoundError, ValueError):
            section["vocab_size"] = ASSUMED_VOCAB
            log.warning("model.vocab_size is unset and data.path (%s) holds no prepared data yet: counting a "
                        "vocabulary of %d; the tokenizer of the data will decide", path, ASSUMED_VOCAB)
    return section


def parameter_breakdown(model) -> "OrderedDict[str, int]":
    """Parameters per component; layers of a stack are summed (`blocks.*.attn`)."""
    out: "OrderedDict[str, int]" = OrderedDict()
    for name, p in model.named_parameters():  # shared (tied) parameters are listed once
        parts = re.sub(r"\.\d+(?=\.|$)", ".*", name).split(".")
        key = ".".join(parts[:3]) if len(parts) > 3 and parts[1] == "*" else parts[0]
        out[key] = out.get(key, 0) + p.numel()
    return out


def cmd_model_summary(args) -> int:
    import torch
    from pydantic import ValidationError

    from neurograph.model import build_model, parse_model_config

    from ..config import format_validation_error

    try:
        mcfg = parse_model_config(model_section(args))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err).replace("  ", "  model.", 1)) from None
    with torch.device("meta"):
        model = build_model(mcfg)
    parts = parameter_breakdown(model)
    total = sum(parts.values())
    if args.json:
        print(json.dumps({"arch": mcfg.arch, "vocab_size": mcfg.vocab_size, "total": total, "components": parts},
                         indent=2))
        return 0
    width = max(len(k) for k in parts) + 2
    print(f"{mcfg.arch} model, parameters per component")
    for name, n in parts.items():
        print(f"  {name:<{width}}{n:>15,}  {100 * n / total:5.1f}%")
    print(f"  {'total':<{width}}{total:>15,}")
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="model tools").add_subparsers(dest="model_command", required=True)
    summary = model.add_parser("summary", help="parameters per component, built on the meta device")
    summary.add_argument("--config", required=True, metavar="FILE",
                         help="YAML config (or a run's config.yaml); only its model section (and data.path) is read")
    summary.add_argument("--json", action="store_true", help="print JSON to stdout instead of a table")
    summary.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. model.n_layer=4")
    summary.set_defaults(func=cmd_model_summary)
