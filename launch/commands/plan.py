"""`neurograph plan`: memory per GPU, the largest micro-batch and the time of a config on a GPU cluster."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ..config import ConfigError, apply_overrides, read_yaml
from ..planner import GPU_MEMORY_GIB, format_plan, make_plan
from ..roofline import format_roofline
from .model import model_section


def cmd_plan(args) -> int:
    from neurograph.model import parse_model_config
    from neurograph.trainer.config import DeepSpeedConfig, TrainerConfig

    raw = apply_overrides(read_yaml(args.config), args.overrides)
    try:
        model_cfg = parse_model_config(model_section(args))
        trainer_cfg = TrainerConfig(**raw.get("trainer", {}))
        zero_stage = DeepSpeedConfig(**raw.get("deepspeed", {})).zero_stage
    except ValueError as err:
        raise ConfigError(f"{args.config}: {err}") from None
    seq_len = int(raw.get("data", {}).get("seq_len", 256))
    plan = make_plan(model_cfg, trainer_cfg, zero_stage, seq_len, args.nodes, args.gpus_per_node, args.gpu,
                     args.tokens, args.mfu)
    if args.json:
        print(json.dumps(asdict(plan), indent=2))
    else:
        print(format_plan(plan) + "\n\n" + format_roofline(plan.roofline, plan.predicted_mfu_by_integrator))
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan", help="memory per GPU, largest micro-batch, time and predicted MFU of a config on a GPU cluster",
        description="Parameters, model states per GPU for ZeRO 1/2/3, activations with and without activation "
                    "checkpointing, the largest micro-batch that fits, steps, wall-clock and GPU-hours for a "
                    "token budget, the checkpoint size, and a roofline of one step on the GPU (FLOPs and bytes counted "
                    "per component: matmuls, attention, integrator, scan, elementwise, optimizer, communication) with "
                    "its predicted MFU (for INL also per integrator variant: loop, compiled, fused, triton, triton-v1). Builds "
                    "the model on the meta device only.",
        epilog="example: neurograph plan --config configs/inl_1.1b.yaml --nodes 8 --gpus-per-node 8 --gpu h100 "
               "--tokens 20e9 --mfu 0.4")
    p.add_argument("--config", required=True, help="YAML run configuration")
    p.add_argument("--nodes", type=int, default=1, help="nodes in the cluster")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node")
    p.add_argument("--gpu", default="h100", choices=sorted(GPU_MEMORY_GIB), help="GPU model (memory and peak rate)")
    p.add_argument("--tokens", type=float, default=None,
                   help="training tokens (default: trainer.max_steps x tokens per step)")
    p.add_argument("--mfu", type=float, default=0.4,
                   help="model FLOP utilization assumed for the time estimate (the roofline's prediction is apart)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.set_defaults(func=cmd_plan)

