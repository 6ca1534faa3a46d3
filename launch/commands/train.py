"""`neurograph train`: validate the configuration, check a resume or an --init-from source, write the
run's config.yaml and start the ranks (local processes or Ray Train workers)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import ConfigError, load_config, resolved, save_config


def cmd_train(args) -> int:
    if args.resume is not None and "=" in args.resume:  # `--resume key=value`: an override, not a tag
        args.overrides.insert(0, args.resume)
        args.resume = "latest"
    cfg = resolved(load_config(args.config, args.overrides))
    run_dir = Path(cfg.trainer.run_dir)
    from neurograph.trainer.checkpoint import CheckpointManager

    from ..resume import checked_resume

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
        args.resume = checked_resume(cfg, checkpoints, args.resume, args.allow_config_change, args.reshard)
    if args.init_from is not None:
        if args.resume is not None:
            raise ConfigError("--init-from starts a new run from another run's weights; it excludes --resume")
        from ..init_from import init_weights_from

        cfg = init_weights_from(cfg, args.init_from)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "config.yaml"
    save_config(cfg, config_file)
    if cfg.launcher.kind == "ray":
        from ..ray_launcher import launch_ray

        return launch_ray(cfg, args.resume)
    from ..local import launch_local

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


def add_command(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train from a YAML config (dotted overrides: trainer.lr=3e-4)")
    train.add_argument("--config", required=True, metavar="FILE", help="YAML run configuration (see `config show`)")
    train.add_argument("--resume", nargs="?", const="latest", default=None, metavar="STEP",
                       help="continue from a checkpoint of trainer.run_dir: latest (default; the newest that "
                            "verifies), a step or a tag; --resume=latest or --resume 400 (a key=value after a "
                            "bare --resume stays an override)")
    train.add_argument("--resume-from", default=None, metavar="mlflow:RUN_ID",
                       help="download the newest checkpoint logged to an MLflow run and continue that run")
    train.add_argument("--allow-config-change", action="store_true",
                       help="resume although the model or data section differs from the checkpoint's")
    train.add_argument("--reshard", action="store_true",
                       help="resume a checkpoint written with another world size or ZeRO stage (1-3): convert it to a "
                            "universal checkpoint beside the original (fp32 weights, optimizer moments, schedule, data "
                            "position); without it such a resume is refused")
    train.add_argument("--init-from", default=None, metavar="RUN[:STEP]",
                       help="start from the weights of another run's checkpoint (latest, or STEP): new optimizer, "
                            "schedule and data order, step 0 (fine-tuning)")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides (values as YAML)")
    train.set_defaults(func=cmd_train)
