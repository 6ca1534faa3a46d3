"""`neurograph plan`: will a config fit a cluster, and how long will its token budget take?

    parameters                 the model built on the meta device (no memory)
    model states per GPU       bytes per parameter as DeepSpeed's estimators count them (below)
    activations per GPU        the tensors autograd saves in one training forward (+ loss), traced on the
                               meta device at the config's micro-batch and sequence length (so INL's K
                               iterations and INN's N neurons are included): none, every block
                               checkpointed, and (INL) selective checkpointing of the integrator branches
    largest micro-batch        that fits the GPU's memory (less `headroom`) under the config's ZeRO stage
    time                       steps, wall-clock and GPU-hours for `tokens` at a given (assumed) MFU
    predicted MFU              the roofline of one step on the GPU (launch/roofline.py), per component; for INL
                               also for each integrator variant (loop, compiled, fused, triton, triton-v1)
    checkpoint                 DeepSpeed checkpoint on disk: 16-bit weights + fp32 master and Adam states

Model states, bf16 (bytes per parameter; P parameters, G GPUs, L the largest layer's parameters):
ZeRO-1 4 + 16/G (16-bit weights and gradients replicated; fp32 gradients, master weights, Adam m, v
partitioned), ZeRO-2 2 + 18/G, ZeRO-3 18/G + 4 L/P (DeepSpeed's `estimate_zero2/3_model_states_mem_needs`).
fp32: weights 4, gradients 4, Adam 8, no master copy. Attention is counted as flash attention saves
it (q, k, v, output, log-sum-exp; no T x T scores), as on a GPU.
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from neurograph.trainer.acceleration import supports_selective

from .roofline import INTEGRATOR_VARIANTS, Roofline, predict, without_own_recomputation

GIB = 2**30
GPU_MEMORY_GIB = {"h200": 141, "h100": 80, "h100-pcie": 80, "a100": 80, "a100-40gb": 40, "l40s": 48, "l4": 24,
                  "a10": 24}
# (replicated, partitioned) bytes per parameter of (weights, gradients, optimizer states) per stage
STATE_BYTES = {
    "bf16": {0: ((2, 0), (6, 0), (12, 0)), 1: ((2, 0), (2, 4), (0, 12)), 2: ((2, 0), (0, 6), (0, 12)),
             3: ((0, 2), (0, 4), (0, 12))},
    "fp32": {0: ((4, 0), (4, 0), (8, 0)), 1: ((4, 0), (4, 0), (0, 8)), 2: ((4, 0), (0, 4), (0, 8)),
             3: ((0, 4), (0, 4), (0, 8))},
}
CHECKPOINT_BYTES = {"bf16": 2 + 12, "fp32": 4 + 8}  # weights + (master,) m, v


def model_state_bytes(params: int, largest_layer: int, stage: int, precision: str, gpus: int) -> dict[str, float]:
    """Per-GPU bytes of weights, gradients and optimizer states (+ the gathered layer under ZeRO-3)."""
    out = {name: params * (rep + part / gpus)
           for name, (rep, part) in zip(("params", "grads", "optimizer"), STATE_BYTES[precision][stage])}
    if stage == 3:  # one layer's 16-bit weights and gradients gathered at a time
        out["params"] += (4 if precision == "bf16" else 8) * largest_layer
    return out


@contextmanager
def flash_attention_accounting():
    """Make F.scaled_dot_product_attention save what flash attention saves (q, k, v, out, lse)."""

    class FlashSDPA(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty(q.shape[:-1] + v.shape[-1:])
            ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
            return out

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, *args, **kwargs: FlashSDPA.apply(q, k, v)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def traced_activation_bytes(model_cfg, micro_batch: int, seq_len: int, precision: str,
                            selective: bool = False) -> dict[str, float]:
    """Saved-for-backward bytes of one training forward + loss, traced on the meta device:
    {"per_layer", "rest", "block_input"} (block_input: what a checkpointed block keeps). `selective`: with the
    modules the family names recomputed (trainer.activation_checkpointing=selective), which keep their inputs."""
    from neurograph.model import build_model, parse_model_config
    from neurograph.trainer.acceleration import checkpoint_blocks

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    traced = {}
    for n_layer in (1, 2):
        cfg = without_own_recomputation(dataclasses.replace(parse_model_config(model_cfg), n_layer=n_layer))
        if getattr(cfg, "scan_impl", "chunked") not in ("chunked", "sequential"):  # compiled kernels: no meta
            cfg = dataclasses.replace(cfg, scan_impl="chunked")  # saves what mamba-ssm's kernel saves
        with torch.device("meta"):
            model = build_model(cfg).to(dtype).train()
        recomputed = []
        if selective:
            recomputed, _ = model.selective_checkpointing()
            checkpoint_blocks(model, "selective")
        ids = torch.zeros(micro_batch, seq_len + 1, dtype=torch.long, device="meta")
        traced[n_layer] = _saved_bytes(model, ids, recomputed)
    per_layer = traced[2]["saved"] - traced[1]["saved"]
    return {"per_layer": per_layer, "rest": traced[1]["saved"] - per_layer, "block_input": traced[1]["block_input"]}


def activation_bytes_per_sequence(model_cfg, seq_len: int, precision: str) -> dict[str, float]:
    """Peak activation bytes of one sequence by checkpointing mode: none, layers (the block inputs, plus one
    block's saved set alive while its recomputed backward runs) and, where the family has it, selective (the same
    for the recomputed modules)."""
    from neurograph.model import model_spec

    n = model_cfg.n_layer
    act = traced_activation_bytes(model_cfg, 1, seq_len, precision)
    per_sequence = {"none": act["per_layer"] * n + act["rest"],
                    "layers": act["block_input"] * n + act["per_layer"] + act["rest"]}
    if supports_selective(model_spec(model_cfg.arch).builder):
        kept = traced_activation_bytes(model_cfg, 1, seq_len, precision, selective=True)
        per_sequence["selective"] = kept["per_layer"] * n + kept["rest"] + act["per_layer"] - kept["per_layer"]
    return per_sequence


def _saved_bytes(model: torch.nn.Module, ids: torch.Tensor, recomputed: list = ()) -> dict[str, float]:
    """Bytes autograd saves (views of one storage once), plus the inputs the `recomputed` (checkpointed) modules keep."""
    from neurograph.trainer.acceleration import block_list

    params = {p.untyped_storage()._cdata for p in model.parameters()}  # weights and their views (W^T) are model states
    saved: dict[int, int] = {}
    block_input = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved[storage._cdata] = storage.nbytes()  # views of one storage count once
        return t

    def keep_inputs(_, args) -> None:
        for t in args:
            if isinstance(t, torch.Tensor):
                pack(t)

    first = block_list(model)[0]
    hooks = [first.register_forward_pre_hook(lambda _, args: block_input.append(args[0].nbytes))]
    hooks += [m.register_forward_pre_hook(keep_inputs) for m in recomputed]
    with flash_attention_accounting(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    for hook in hooks:
        hook.remove()
    return {"saved": float(sum(saved.values())), "block_input": float(block_input[0])}


@dataclass
class Plan:
    params: int
    largest_layer_params: int
    gpus: int
    gpu: str
    gpu_memory_gib: float
    zero_stage: int
    precision: str
    micro_batch: int
    seq_len: int
    model_states_gib: dict  # {stage: {params, grads, optimizer, total}}
    activations_gib: dict  # {"none": ..., "layers": ..., "selective" where the family has it} at the micro-batch
    total_gib: dict  # the same keys, under the config's stage
    largest_micro_batch: dict  # the same keys
    tokens: float
    tokens_per_step: int
    steps: int
    mfu: float
    flops_per_token: float
    wall_clock_hours: float
    gpu_hours: float
    checkpoint_gib: float
    predicted_mfu: float  # the roofline's, apart from the assumed `mfu` of the time plan
    predicted_mfu_by_integrator: dict  # INL: {variant: predicted MFU}; {} for other families
    roofline: Roofline


def make_plan(model_cfg, trainer_cfg, zero_stage: int, seq_len: int, nodes: int, gpus_per_node: int, gpu: str,
              tokens: float | None = None, mfu: float = 0.4, headroom: float = 0.1) -> Plan:
    """The plan of one run; `tokens` defaults to the config's max_steps x tokens per step."""
    from neurograph.model import build_model, parse_model_config
    from neurograph.trainer.mfu import GPU_NAMES, table_peak_tflops

    model_cfg = parse_model_config(model_cfg)
    with torch.device("meta"):
        model = build_model(model_cfg)
    params = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    gpus = nodes * gpus_per_node
    precision, mb = trainer_cfg.precision, trainer_cfg.micro_batch_size
    states = {}
    for stage in (0, 1, 2, 3):
        parts = model_state_bytes(params, largest, stage, precision, gpus)
        states[stage] = {k: v / GIB for k, v in {**parts, "total": sum(parts.values())}.items()}
    per_sample = activation_bytes_per_sequence(model_cfg, seq_len, precision)  # linear in the micro-batch
    capacity = GPU_MEMORY_GIB[gpu] * (1 - headroom) * GIB
    fixed = states[zero_stage]["total"] * GIB
    tokens_per_step = mb * trainer_cfg.grad_accum_steps * gpus * seq_len
    tokens = tokens if tokens is not None else trainer_cfg.max_steps * tokens_per_step
    flops_per_token = model.flops_per_token(seq_len)
    peak = table_peak_tflops(GPU_NAMES[gpu], precision) * 1e12
    wall_s = flops_per_token * tokens / (mfu * peak * gpus)
    cluster = (model_cfg, trainer_cfg, seq_len, zero_stage, nodes, gpus_per_node, gpu)
    roofline = predict(*cluster)
    variants = INTEGRATOR_VARIANTS if roofline.integrator else ()
    return Plan(
        params=params, largest_layer_params=largest, gpus=gpus, gpu=gpu, gpu_memory_gib=GPU_MEMORY_GIB[gpu],
        zero_stage=zero_stage, precision=precision, micro_batch=mb, seq_len=seq_len, model_states_gib=states,
        activations_gib={k: v * mb / GIB for k, v in per_sample.items()},
        total_gib={k: (fixed + v * mb) / GIB for k, v in per_sample.items()},
        largest_micro_batch={k: max(0, math.floor((capacity - fixed) / v)) for k, v in per_sample.items()},
        tokens=tokens, tokens_per_step=tokens_per_step, steps=math.ceil(tokens / tokens_per_step), mfu=mfu,
        flops_per_token=flops_per_token, wall_clock_hours=wall_s / 3600, gpu_hours=wall_s * gpus / 3600,
        checkpoint_gib=params * CHECKPOINT_BYTES[precision] / GIB, predicted_mfu=roofline.predicted_mfu,
        predicted_mfu_by_integrator={v: predict(*cluster, integrator=v).predicted_mfu for v in variants},
        roofline=roofline)


def format_plan(p: Plan) -> str:
    """The plan as a Markdown table (README and config comments use it as is)."""
    s = p.model_states_gib
    rows = [("parameters", f"{p.params:,} (largest layer {p.largest_layer_params:,})"),
            ("cluster", f"{p.gpus} x {p.gpu} ({p.gpu_memory_gib} GiB), {p.precision}, ZeRO-{p.zero_stage}")]
    rows += [(f"model states / GPU, ZeRO-{k}",
              f"{v['total']:.2f} GiB (params {v['params']:.2f}, grads {v['grads']:.2f}, optimizer {v['optimizer']:.2f})")
             for k, v in s.items() if k or not p.zero_stage]
    for mode, label in (("none", "no checkpointing"), ("layers", "checkpointing every block"),
                        ("selective", "selective checkpointing")):
        if mode not in p.activations_gib:
            continue
        rows.append((f"activations / GPU, {label}",
                     f"{p.activations_gib[mode]:.2f} GiB at micro-batch {p.micro_batch} x {p.seq_len}; "
                     f"total {p.total_gib[mode]:.2f} GiB; largest micro-batch that fits {p.largest_micro_batch[mode]}"))
    rows += [("tokens", f"{p.tokens:.3g} ({p.steps:,} steps of {p.tokens_per_step:,} tokens)"),
             ("time at MFU " + f"{p.mfu:.0%}", f"{p.wall_clock_hours:,.1f} h wall-clock, {p.gpu_hours:,.0f} GPU-hours "
                                               f"({p.flops_per_token / 1e9:.2f} GFLOP per token)"),
             ("checkpoint on disk", f"{p.checkpoint_gib:.1f} GiB")]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"| {'':<{width}} | plan |", f"| {'-' * width} | --- |"] + [f"| {k:<{width}} | {v} |" for k, v in rows])
