"""The `neurograph` command line."""
from __future__ import annotations

import argparse
import importlib.resources as resources
import json
import logging
import re
import sys
from collections import OrderedDict
from pathlib import Path

from .config import ConfigError, apply_overrides, load_config, read_yaml, resolved, save_config
from .logs import setup_logging

SHIPPED_CONFIGS = Path(str(resources.files("neurograph.configs")))  # configs/, also in a wheel


def cmd_train(args) -> int:
    if args.resume is not None and "=" in args.resume:  # `--resume key=value`: an override, not a tag
        args.overrides.insert(0, args.resume)
        args.resume = "latest"
    cfg = resolved(load_config(args.config, args.overrides))
    run_dir = Path(cfg.trainer.run_dir)
    from neurograph.trainer.checkpoint import CheckpointManager

    from .resume import checked_resume

    resume_from = getattr(args, "resume_from", None)
    if resume_from is not None:
        if args.resume is not None:
            raise ConfigError("--resume and --resume-from exclude each other")
        args.resume = _download_resume_checkpoint(cfg, resume_from)
    checkpoints = CheckpointManager(run_dir / "checkpoints")
    published = checkpoints.published()
    if args.resume is None and published:
        raise ConfigError(f"trainer.run_dir {run_dir} already holds checkpoints ({published[-1]}); "
                          "continue it with --resume, or choose another trainer.run_dir")
    if args.resume is not None and not published:
        raise ConfigError(f"--resume: no published checkpoint under {run_dir / 'checkpoints'}")
    if args.resume is not None:
        args.resume = checked_resume(cfg, checkpoints, args.resume, args.allow_config_change)
    if args.init_from is not None:
        if args.resume is not None:
            raise ConfigError("--init-from starts a new run from another run's weights; it excludes --resume")
        from .init_from import init_weights_from

        cfg = init_weights_from(cfg, args.init_from)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "config.yaml"
    save_config(cfg, config_file)
    if cfg.launcher.kind == "ray":
        from .ray_launcher import launch_ray

        return launch_ray(cfg, args.resume)
    from .local import launch_local

    return launch_local(cfg, config_file, args.resume)


def _download_resume_checkpoint(cfg, source: str) -> str:
    """`--resume-from mlflow:RUN_ID`: the run's newest checkpoint artifact, downloaded into
    trainer.run_dir/checkpoints and published as `latest`; returns the tag to resume from
    (the checkpoint carries the run id, so the same MLflow run continues)."""
    scheme, _, run_id = source.partition(":")
    if scheme != "mlflow" or not run_id:
        raise ConfigError(f"--resume-from {source!r}: expected mlflow:RUN_ID")
    if not cfg.tracking.uri:
        raise ConfigError("--resume-from mlflow:RUN_ID needs tracking.uri (the MLflow server holding the run)")
    from neurograph.trainer.tracking import download_checkpoint

    try:
        tag = download_checkpoint(cfg.tracking.uri, run_id, Path(cfg.trainer.run_dir) / "checkpoints")
    except Exception as err:  # unknown run, no checkpoint logged, server unreachable
        raise ConfigError(f"--resume-from {source}: {err}") from None
    logging.getLogger("neurograph").info("downloaded checkpoint %s of MLflow run %s", tag, run_id)
    return tag


def model_section(args) -> dict:
    """The `model` section of a config file (+ overrides), vocabulary filled from the data if unset."""
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
            raise ConfigError("model.vocab_size is unset and data.path holds no prepared data to take it from")
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

    from .config import format_validation_error

    try:
        mcfg = parse_model_config(model_section(args))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err).replace("  ", "  model.", 1)) from None
    with torch.device("meta"):
        model = build_model(mcfg)
    parts = parameter_breakdown(model)
    total = sum(parts.values())
    if args.json:
        print(json.dumps({"arch": mcfg.arch, "total": total, "components": parts}, indent=2))
        return 0
    width = max(len(k) for k in parts) + 2
    print(f"{mcfg.arch} model, parameters per component")
    for name, n in parts.items():
        print(f"  {name:<{width}}{n:>15,}  {100 * n / total:5.1f}%")
    print(f"  {'total':<{width}}{total:>15,}")
    return 0


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
    from neurograph.trainer.checkpoint import CheckpointManager

    resume = "latest" if CheckpointManager(run_dir / "checkpoints").published() else None
    if resume:
        print(f"{run_dir} already has checkpoints: continuing it (delete it for a fresh run)")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    from .local import launch_local

    code = launch_local(cfg, run_dir / "config.yaml", resume)
    if code == 0:
        ckpt = CheckpointManager(run_dir / "checkpoints")
        run_id = (run_dir / "mlflow_run_id").read_text().strip()
        db = run_dir / "mlflow.db"
        import torch

        from .inference import encode_prompt, load_trained_model

        model, tokenizer, _ = load_trained_model(run_dir)
        sample = model.generate(encode_prompt(tokenizer, "ROMEO:"), 200, temperature=0.8, do_sample=True,
                                generator=torch.Generator().manual_seed(0))
        print("\nsample:\n" + tokenizer.decode(sample[0].tolist()))
        print("\ndemo finished")
        print(f"  checkpoint : {ckpt.root / ckpt.latest_tag()}")
        print(f"  metrics    : {run_dir / 'metrics.jsonl'}")
        print(f"  MLflow run : {run_id} in sqlite:///{db}")
        print(f"  MLflow UI  : .venv/bin/mlflow ui --backend-store-uri sqlite:///{db} --port 5000   "
              "(then open http://127.0.0.1:5000)")
    return code


def _load_run(run: str, checkpoint: str):
    """(model, tokenizer) of a run's checkpoint; one-line errors for a wrong --run or --checkpoint."""
    from .inference import load_trained_model

    if not (Path(run) / "config.yaml").is_file():
        raise ConfigError(f"--run {run}: not a training run directory (no config.yaml)")
    try:
        model, tokenizer, _ = load_trained_model(run, checkpoint)
    except FileNotFoundError as err:
        raise ConfigError(f"--checkpoint {checkpoint}: {err}") from None
    return model, tokenizer


def cmd_generate(args) -> int:
    import torch

    from .inference import encode_prompt

    invalid = [name for name, ok in (("--max-new-tokens", args.max_new_tokens > 0),
                                     ("--temperature", args.temperature > 0),
                                     ("--top-k", args.top_k is None or args.top_k > 0),
                                     ("--top-p", args.top_p is None or 0 < args.top_p <= 1)) if not ok]
    if invalid:
        raise ConfigError(f"{invalid[0]} out of range (max-new-tokens, temperature, top-k > 0; 0 < top-p <= 1)")
    model, tokenizer = _load_run(args.run, args.checkpoint)
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


def cmd_convergence(args) -> int:
    from neurograph.model.inl_convergence import plot_convergence

    from .inference import encode_prompt

    model, tokenizer = _load_run(args.run, args.checkpoint)
    if model.cfg.arch != "inl":
        raise ConfigError(f"convergence plots need an INL model, the run has model.arch={model.cfg.arch}")
    ids = encode_prompt(tokenizer, args.prompt)
    path = plot_convergence(model, ids, args.out, tokens=[tokenizer.decode([i]) for i in ids[0].tolist()])
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurograph", description="Pretrain neuron-graph language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train from a YAML config (dotted overrides: trainer.lr=3e-4)")
    train.add_argument("--config", required=True, metavar="FILE", help="YAML run configuration (see `config show`)")
    train.add_argument("--resume", nargs="?", const="latest", default=None, metavar="STEP",
                       help="continue from a checkpoint of trainer.run_dir: latest (default; the newest that "
                            "verifies), a step or a tag; --resume=latest or --resume 400 (a key=value after a "
                            "bare --resume stays an override)")
    train.add_argument("--resume-from", default=None, metavar="mlflow:RUN_ID",
                       help="download the newest checkpoint logged to an MLflow run and continue that run")
    train.add_argument("--allow-config-change", action="store_true",
                       help="resume although the model or data section differs from the checkpoint's")
    train.add_argument("--init-from", default=None, metavar="RUN[:STEP]",
                       help="start from the weights of another run's checkpoint (latest, or STEP): new optimizer, "
                            "schedule and data order, step 0 (fine-tuning)")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides (values as YAML)")
    train.set_defaults(func=cmd_train)

    model = sub.add_parser("model", help="model tools").add_subparsers(dest="model_command", required=True)
    summary = model.add_parser("summary", help="parameters per component, built on the meta device")
    summary.add_argument("--config", required=True, metavar="FILE",
                         help="YAML config (or a run's config.yaml); only its model section (and data.path) is read")
    summary.add_argument("--json", action="store_true", help="print JSON to stdout instead of a table")
    summary.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. model.n_layer=4")
    summary.set_defaults(func=cmd_model_summary)

    from neurograph.data_pipeline.cli import add_data_commands

    add_data_commands(sub.add_parser("data", help="prepare and verify token shards").add_subparsers(
        dest="data_command", required=True))

    gen = sub.add_parser("generate", help="sample text from a trained run")
    gen.add_argument("--run", required=True, help="run directory (trainer.run_dir)")
    gen.add_argument("--checkpoint", default="latest", help="latest, a step number or a tag")
    gen.add_argument("--prompt", required=True, help="text the sample continues (printed with it)")
    gen.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate")
    gen.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (> 0)")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set of mass >= p")
    gen.add_argument("--greedy", action="store_true", help="take the most likely token (no sampling)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same text)")
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convergence", help="plot an INL model's integrator energy per layer and iteration (PNG)")
    conv.add_argument("--run", required=True, help="run directory of an INL model (trainer.run_dir)")
    conv.add_argument("--checkpoint", default="latest", help="latest, a step number or a tag")
    conv.add_argument("--prompt", required=True, help="text whose tokens are traced")
    conv.add_argument("--out", default="convergence.png", help="PNG file to write")
    conv.set_defaults(func=cmd_convergence)

    from .export_hf import add_export_commands

    add_export_commands(sub.add_parser("export", help="export a trained run (Hugging Face folder)").add_subparsers(
        dest="export_command", required=True))

    demo = sub.add_parser("demo", help="prepare Shakespeare and train a small char model on 2 processes")
    demo.add_argument("--run-root", default="runs/demo", metavar="DIR", help="where the data and the run go")
    demo.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides of configs/demo.yaml")
    demo.set_defaults(func=cmd_demo)

    from .plan import add_plan_command

    add_plan_command(sub)

    from .doctor import add_doctor_command

    add_doctor_command(sub)

    from .cli_docs import add_config_commands, document
    from .evaluate import add_eval_command

    add_config_commands(sub.add_parser("config", help="inspect configurations").add_subparsers(
        dest="config_command", required=True))
    add_eval_command(sub)
    parser.add_argument("--verbose", action="store_true", help="log every rank and dependencies' messages")
    return document(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbose_flag=args.verbose)
    from neurograph.data_pipeline.errors import DataError

    try:
        return args.func(args) or 0
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
