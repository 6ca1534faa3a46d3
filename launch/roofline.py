"""Roofline of one training step on a named GPU: `neurograph plan`'s predicted MFU.

Counted, not timed. One micro-step (forward, the trainer's loss, backward, and the recomputed forwards under
activation checkpointing) runs on the meta device under a dispatch mode that gives every aten op its FLOPs (torch's
flop counter: matmuls, convolutions) and its bytes (every input read and every output written once, in HBM; views
free). Kernels a GPU runs fused are replaced while tracing by stand-ins that count what the fused kernel does:
attention (flash attention: q, k, v and the output cross HBM, no scores; causal halves the FLOPs), the selective scan
(mamba-ssm's kernel), the Mamba block's causal conv + SiLU (causal-conv1d's or the Triton kernel; unless
`conv_impl: reference`), dropout (CUDA's one kernel; meta decomposes it) and, except for the eager loop, the
integrator's K iterations (the variants below).

    kernel        max(FLOPs / (peak x efficiency), bytes / (HBM bandwidth x HBM_FRACTION), KERNEL_MIN_S)
    step          grad_accum x micro-step + optimizer + communication: summed, no overlap (an upper bound)
    predicted MFU model FLOPs of the step (`flops_per_token`, as train/mfu counts them) / (step time x peak)

Components: matmuls (and convolutions), attention, integrator (every op of INL's integrator branch), scan,
elementwise (norms, activations, dropout, residuals, embedding, loss), optimizer, communication (ZeRO's collectives).

Integrator variants (INL; `INTEGRATOR_IMPLS` maps `integrator_impl` to one):
    loop       the eager PyTorch loop (`reference`): its own ops, each a kernel
    compiled   the loop under torch.compile: the controller's matmuls stay cuBLAS calls whose inputs and outputs cross
               HBM (raw [N, 4D] written and read each iteration); the elementwise ops between them fuse
    fused      one kernel per layer (the redesigned Triton kernel's goal): tensor-core dots, weights and state on chip;
               forward reads z0, ctx, the mask and writes z_K; backward recomputes on chip, reads those and dz_K,
               writes dz0, dctx and the weight gradients
    triton     kernels/integrator/triton.py since 2026-12-07 (unmeasured): the fused variant's tensor-core dots, plus
               the HBM traffic of its design: forward writes every iterate z_k, v_k and pre_k, backward reads them,
               writes dLoss/draw [K, N, 4D], and the host's weight-gradient matmuls read graw, relu(pre) and the
               iterates (the state between passes stays in L2); its dots at the matmul rate, an upper bound for
               16-token tiles
    triton-v1  that file as measured on an H200 before its rewrite (fp32 dots on FMA units): the fused variant's
               FLOPs at the share of the fp32 peak the op bench measured (~10%), calibrated from TRITON_V1_MEASURED
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from typing import Optional
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.module_tracker import ModuleTracker

MATMUL_EFFICIENCY = 0.7  # cuBLAS GEMMs at a 1B model's shapes reach ~70% of the dense tensor-core peak
ATTENTION_EFFICIENCY = 0.5  # FlashAttention-2 forward + backward: ~50-60% of the peak at head dims 64-128
VECTOR_EFFICIENCY = 0.5  # fp32 arithmetic on CUDA cores (the scan's recurrence), half the fp32 peak
HBM_FRACTION = 0.8  # streaming kernels reach ~80-90% of the datasheet (a copy: 4.3 of 4.8 TB/s on an H200)
LINK_FRACTION = 0.8  # NCCL's bus bandwidth for large all-gathers and reduce-scatters, of the link's
INTER_NODE_GB_S = 50.0  # one 400 Gb/s InfiniBand NIC per GPU (DGX H100/H200): a ring's slowest hop across nodes
KERNEL_MIN_S = 3e-6  # small kernels launched back to back on one stream run ~2-4 us apart
ATTENTION_BACKWARD = 2.5  # FlashAttention-2's backward FLOPs per forward FLOP (5 matmuls against 2)
SCAN_BACKWARD = 2.0  # mamba-ssm's backward FLOPs per forward FLOP: the states recomputed, then the reverse scan
# AdamW bytes per parameter updated on a GPU. bf16 (DeepSpeed): reads the fp32 gradient, master, m, v (16), writes
# master, m, v and the bf16 weight (14); fp32: reads p, g, m, v (16), writes p, m, v (12).
OPTIMIZER_BYTES = {"bf16": 30, "fp32": 28}
# The compiled loop per token and iteration, in D-sized values (r-sized ones neglected: r << D). Forward 15: the
# matmuls read z, v; raw (4D) written by one, read by the fused update, which also reads z, v, the mask and writes
# z, v. Backward 29: the update's backward (reads dz, dv, raw, z, v, mask; writes draw, dz, dv: 15), draw read twice
# (dh, dWout: 8), dz and dv accumulated through the input matmuls (4) and z, v read for dWz, dWv (2).
COMPILED_VALUES = (15, 29)
COMPILED_KERNELS = (5, 9)  # kernels per iteration: forward 2 mm, add + relu, addmm, update; backward about twice
# kernels/integrator/triton.py, forward + backward on an H200 in fp32 (BENCHMARKS.md, "Triton kernels",
# 2026-11-30): seconds, tokens N, D, r, K, the fp32 peak TFLOP/s it ran against.
TRITON_V1_MEASURED = (30.54e-3, 8192, 1728, 64, 5, 67.0)

INTEGRATOR_VARIANTS = ("loop", "compiled", "fused", "triton", "triton-v1")
INTEGRATOR_IMPLS = {"reference": "loop", "auto": "compiled", "compiled": "compiled", "triton": "triton"}
COMPONENTS = ("matmuls", "attention", "integrator", "scan", "elementwise", "optimizer", "communication")
FREE_OPS = {torch.ops.aten.empty, torch.ops.aten.empty_like, torch.ops.aten.empty_strided, torch.ops.aten.new_empty,
            torch.ops.aten._unsafe_view}


def _nbytes(t: Optional[torch.Tensor]) -> int:
    """Bytes a kernel touches in `t`: broadcast (stride 0) dimensions count once."""
    if t is None or not t.numel():
        return 0
    return t.element_size() * int(torch.Size(s for s, st in zip(t.shape, t.stride()) if st).numel())


def integrator_flops(n: int, d: int, r: int, k: int) -> int:
    """Forward FLOPs of K iterations' controller dots: z Wz^T (K), v Wv^T (K - 1: v_0 = 0), Wout [4D, r] (K)."""
    return 2 * n * d * r * (6 * k - 1)


def _triton_v1_fraction() -> float:
    """The fp32 peak's share the Triton kernel reached (its forward + backward counted as 4 x the forward FLOPs)."""
    seconds, n, d, r, k, fp32_tflops = TRITON_V1_MEASURED
    return 4 * integrator_flops(n, d, r, k) / (seconds * fp32_tflops * 1e12)


# rate: (peak it divides by, efficiency)
RATES = {"matmul": ("precision", MATMUL_EFFICIENCY), "attention": ("precision", ATTENTION_EFFICIENCY),
         "vector": ("fp32", VECTOR_EFFICIENCY), "triton-v1": ("fp32", _triton_v1_fraction())}


class _Trace(TorchDispatchMode):
    """Counts the kernels of a traced step: {(component, rate, FLOPs, bytes, kernels): count}."""

    def __init__(self, model: torch.nn.Module):
        from neurograph.model.inl import IntegratorBranch

        from torch.utils.flop_counter import flop_registry  # here: it imports triton, which the CLI need not

        super().__init__()
        self.flop_registry = flop_registry
        self.costs: collections.Counter = collections.Counter()
        self.tracker = ModuleTracker()  # names modules f"{root type}.{qualified name}", in forward and backward
        root = type(model).__name__
        self.integrator = {f"{root}.{n}" for n, m in model.named_modules() if isinstance(m, IntegratorBranch)}

    def add(self, component: str, rate: str, flops: float, nbytes: float, kernels: int = 1) -> None:
        self.costs[component, rate, flops, nbytes, kernels] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet, returns = func.overloadpacket, func._schema.returns
        if packet in FREE_OPS or (returns and returns[0].alias_info and not returns[0].alias_info.is_write):
            return out  # views and allocations move nothing
        flops = self.flop_registry[packet](*args, **kwargs, out_val=out) if packet in self.flop_registry else 0
        nbytes = sum(_nbytes(t) for t in pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor))
        component = "integrator" if self.integrator & self.tracker.parents else "matmuls" if flops else "elementwise"
        self.add(component, "matmul", flops, nbytes)
        return out


class _Fused(torch.autograd.Function):
    """A fused kernel while tracing: adds its forward cost and returns an empty output shaped like inputs[0];
    backward adds its cost and returns empty gradients."""

    @staticmethod
    def forward(ctx, trace: _Trace, fwd: tuple, bwd: tuple, *inputs):
        ctx.trace, ctx.bwd = trace, bwd
        ctx.like = [(x.shape, x.dtype) if isinstance(x, torch.Tensor) else None for x in inputs]
        trace.add(*fwd)
        return inputs[0].new_empty(inputs[0].shape)

    @staticmethod
    def backward(ctx, grad):
        ctx.trace.add(*ctx.bwd)
        grads = [grad.new_empty(like[0], dtype=like[1]) if need else None
                 for like, need in zip(ctx.like, ctx.needs_input_grad[3:])]
        return None, None, None, *grads


def _attention(trace: _Trace, q, k, v, keys: int, causal: bool) -> torch.Tensor:
    """Flash attention of q against `keys` keys each (any layout; the output like q)."""
    flops = 4 * q.numel() * keys * (0.5 if causal else 1.0)
    io, lse = sum(map(_nbytes, (q, k, v))), q.numel() // q.shape[-1] * 4
    fwd = ("attention", "attention", flops, io + _nbytes(q) + lse, 1)
    # backward reads q, k, v, out, dout, lse and writes dq, dk, dv (a preprocessing kernel and the main one)
    bwd = ("attention", "attention", ATTENTION_BACKWARD * flops, 2 * io + 2 * _nbytes(q) + lse, 2)
    return _Fused.apply(trace, fwd, bwd, q, k, v)


def _scan(trace: _Trace, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
          return_last_state=False, **_):
    """mamba-ssm's selective scan: reads its inputs, writes y (forward); reads them and dy, writes their gradients."""
    from neurograph.kernels.selective_scan import selective_scan_flops

    m, d, t = u.shape
    flops = selective_scan_flops(m, t, d, A.shape[-1], D is not None, z is not None)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    io = sum(map(_nbytes, inputs))
    y = _Fused.apply(trace, ("scan", "vector", flops, io + _nbytes(u)),
                     ("scan", "vector", SCAN_BACKWARD * flops, 2 * io + _nbytes(u)), *inputs)
    return (y, u.new_empty(m, d, A.shape[-1], dtype=torch.float32)) if return_last_state else y


def _conv(trace: _Trace, x, weight, bias=None, **_) -> torch.Tensor:
    """The Mamba block's causal conv + SiLU as one kernel each way (causal-conv1d's, or the Triton one): forward
    reads x and writes the output; backward reads x and dout, writes dx (the weight partials neglected)."""
    flops = 2 * weight.shape[-1] * x.numel()
    fwd = ("elementwise", "vector", flops, 2 * _nbytes(x) + _nbytes(weight), 1)
    bwd = ("elementwise", "vector", weight.shape[-1] * flops, 3 * _nbytes(x) + 2 * _nbytes(weight), 1)
    return _Fused.apply(trace, fwd, bwd, x, weight, bias)


def _integrator(trace: _Trace, variant: str, z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt, K, impl=None,
                mask=None, waves=None) -> torch.Tensor:
    """K iterations of one layer as `variant` (compiled, fused, triton, triton-v1) runs them."""
    n, d = z0.shape
    flops = integrator_flops(n, d, ctx.shape[1], K)
    if variant == "compiled":
        values = n * d * z0.element_size() * K
        fwd = ("integrator", "matmul", flops, COMPILED_VALUES[0] * values, COMPILED_KERNELS[0] * K)
        bwd = ("integrator", "matmul", 2 * flops, COMPILED_VALUES[1] * values, COMPILED_KERNELS[1] * K)
    else:
        rate = "triton-v1" if variant == "triton-v1" else "matmul"
        state, weights = _nbytes(z0) + _nbytes(ctx) + _nbytes(mask), sum(map(_nbytes, (wz, wv, wout, bout)))
        fwd_io, bwd_io = state + weights + _nbytes(z0), state + 2 * weights + 2 * _nbytes(z0) + _nbytes(ctx)
        if variant == "triton":  # iterates z_k, v_k (K + 1 each) and pre_k; graw [K, N, 4D] written, then read
            saved = 2 * (K + 1) * _nbytes(z0) + K * _nbytes(ctx)
            fwd_io += saved
            bwd_io += 2 * saved + 2 * 4 * K * _nbytes(z0)  # the kernel and the host's matmuls read the saved set
        fwd = ("integrator", rate, flops, fwd_io, 1)
        bwd = ("integrator", rate, 3 * flops, bwd_io, 1)
    return _Fused.apply(trace, fwd, bwd, z0, ctx, wz, wv, wout, bout, scale, shift, mu, mask, waves)


@contextlib.contextmanager
def _stand_ins(trace: _Trace, integrator: Optional[str], conv: bool):
    """Fused kernels counted as their kernels run: attention, dropout, the scan, the conv where `conv` (not the
    PyTorch reference) and the integrator unless `integrator` is the eager loop."""
    from neurograph.model import inl, mamba, neuron_router

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **_):
        return _attention(trace, q, k, v, k.shape[-2], is_causal or attn_mask is not None)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(F, "scaled_dot_product_attention", sdpa))
        stack.enter_context(mock.patch.object(  # as on CUDA: one kernel writing the output and a mask
            F, "dropout", lambda x, p=0.5, training=True, inplace=False: torch.native_dropout(x, p, training)[0]))
        stack.enter_context(mock.patch.object(
            neuron_router, "neuron_attention", lambda q, k, v, *_: _attention(trace, q, k, v, k.shape[1], False)))
        stack.enter_context(mock.patch.object(
            neuron_router, "topk_neuron_attention",
            lambda q, k, v, idx, *_: _attention(trace, q, k, v, idx.shape[-1], False)))
        stack.enter_context(mock.patch.object(mamba, "selective_scan", lambda *a, **kw: _scan(trace, *a, **kw)))
        if conv:
            stack.enter_context(mock.patch.object(mamba, "causal_conv1d_silu", lambda *a, **kw: _conv(trace, *a, **kw)))
        if integrator not in (None, "loop"):
            stack.enter_context(mock.patch.object(
                inl, "integrator_iterations", lambda *a, **kw: _integrator(trace, integrator, *a, **kw)))
        yield


def without_own_recomputation(model_cfg):
    """`model_cfg` without INN's own `checkpoint_layers` (traces take recomputation from the checkpointing mode:
    a layer recomputed that way never enters the block's forward)."""
    if getattr(model_cfg, "checkpoint_layers", False):
        return dataclasses.replace(model_cfg, checkpoint_layers=False)
    return model_cfg


@functools.lru_cache(maxsize=64)
def trace_micro_step(model_cfg, micro_batch: int, seq_len: int, precision: str, checkpointing: str,
                     integrator: Optional[str] = None) -> collections.Counter:
    """The kernels of one micro-step of `model_cfg` under activation checkpointing `checkpointing` (none, layers:
    every block, selective), traced on the meta device (cached: do not modify the result)."""
    from neurograph.model import build_model
    from neurograph.trainer.acceleration import checkpoint_blocks

    if integrator is not None:  # the loop runs its ops; any other variant goes through integrator_iterations
        model_cfg = dataclasses.replace(model_cfg, integrator_impl="reference" if integrator == "loop" else "compiled")
    model_cfg = without_own_recomputation(model_cfg)  # `checkpointing` decides here
    with torch.device("meta"):
        model = build_model(model_cfg).to(torch.bfloat16 if precision == "bf16" else torch.float32).train()
    checkpoint_blocks(model, checkpointing)
    ids = torch.zeros(micro_batch, seq_len + 1, dtype=torch.long, device="meta")
    trace = _Trace(model)
    conv = any(getattr(m, "conv_impl", "reference") != "reference" for m in model.modules())  # MambaBlocks'
    with _stand_ins(trace, integrator, conv), trace.tracker, trace:
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    return trace.costs


def recomputed_blocks(n_layer: int, mode: str, every: int) -> int:
    """Whole blocks whose forward runs again in backward (trainer/acceleration.py's `checkpoint_blocks`; none under
    `selective`, which recomputes parts of blocks)."""
    return n_layer if mode == "layers" else len(range(0, n_layer, every)) if mode == "every_k" else 0


def micro_step_costs(model_cfg, micro_batch: int, seq_len: int, precision: str, mode: str = "none", every: int = 1,
                     integrator: Optional[str] = None) -> dict:
    """Kernels of one micro-step with `n_layer` blocks, extrapolated from traces of 1 and 2 blocks (counts may be
    fractional or negative per kernel; their sums are exact for identical blocks)."""
    n = model_cfg.n_layer
    recomputed = recomputed_blocks(n, mode, every)
    total: collections.Counter = collections.Counter()
    parts = ((mode, n),) if mode == "selective" else (("none", n - recomputed), ("layers", recomputed))
    for checkpointing, blocks in parts:
        if not blocks:
            continue
        one, two = (trace_micro_step(dataclasses.replace(model_cfg, n_layer=k), micro_batch, seq_len, precision,
                                     checkpointing, integrator) for k in (1, 2))
        for key in one.keys() | two.keys():  # rest + blocks x layer, layer = two - one, rest = one - layer
            total[key] += (two[key] - one[key]) * blocks + (2 * one[key] - two[key]) * (blocks / n)
    return dict(total)


def communication_bytes(params: int, zero_stage: int, gpus: int, grad_accum: int, precision: str,
                        recomputed: float) -> float:
    """Bytes each GPU sends per step in ZeRO's collectives, a ring moving (G - 1) / G of each tensor: stage 0 and 1
    reduce the gradients and gather the weights once per step, 2 reduce-scatters every micro-step, 3 also gathers
    the weights for the forward, the backward and the recomputed forward of every micro-step."""
    if gpus == 1:
        return 0.0
    collectives = {0: 2, 1: 2, 2: grad_accum + 1, 3: grad_accum * (3 + recomputed)}[zero_stage]
    return collectives * (gpus - 1) / gpus * params * (2 if precision == "bf16" else 4)


@dataclass
class Roofline:
    gpu: str
    precision: str
    integrator: Optional[str]  # INL's variant, None for other families
    components: dict  # {component: {"flops", "bytes", "seconds"}} per GPU and step
    step_seconds: float
    model_flops: float  # per GPU and step
    predicted_mfu: float


def predict(model_cfg, trainer_cfg, seq_len: int, zero_stage: int, nodes: int, gpus_per_node: int, gpu: str,
            integrator: Optional[str] = None) -> Roofline:
    """The roofline of one optimizer step per GPU; `integrator` defaults to the variant of the config's impl (INL)."""
    from neurograph.model import build_model
    from neurograph.trainer.acceleration import checkpointing_mode
    from neurograph.trainer.mfu import GPU_NAMES, table_rates

    if integrator is None and hasattr(model_cfg, "integrator_impl"):
        integrator = INTEGRATOR_IMPLS[model_cfg.integrator_impl]
    rates, precision, accum = table_rates(GPU_NAMES[gpu]), trainer_cfg.precision, trainer_cfg.grad_accum_steps
    peak, hbm = rates[precision] * 1e12, rates["hbm"] * 1e12 * HBM_FRACTION
    mode, every = checkpointing_mode(trainer_cfg, model_cfg)
    with torch.device("meta"):
        model = build_model(model_cfg)
    params = sum(p.numel() for p in model.parameters())
    gpus = nodes * gpus_per_node
    components = {c: {"flops": 0.0, "bytes": 0.0, "seconds": 0.0} for c in COMPONENTS}
    for (component, rate, flops, nbytes, kernels), count in micro_step_costs(
            model_cfg, trainer_cfg.micro_batch_size, seq_len, precision, mode, every, integrator).items():
        base, efficiency = RATES[rate]
        seconds = max(flops / ((peak if base == "precision" else rates["fp32"] * 1e12) * efficiency),
                      nbytes / hbm, kernels * KERNEL_MIN_S)
        for key, value in (("flops", flops), ("bytes", nbytes), ("seconds", seconds)):
            components[component][key] += value * count * accum
    optimizer = OPTIMIZER_BYTES[precision] * params / (gpus if zero_stage else 1)
    components["optimizer"].update(bytes=optimizer, seconds=optimizer / hbm)
    recomputed = (model.selective_checkpointing()[1] if mode == "selective"  # of each block's forward
                  else recomputed_blocks(model_cfg.n_layer, mode, every) / model_cfg.n_layer)
    sent = communication_bytes(params, zero_stage, gpus, accum, precision, recomputed)
    link = (rates["link"] if nodes == 1 else min(rates["link"], INTER_NODE_GB_S)) * 1e9 * LINK_FRACTION
    components["communication"].update(bytes=sent, seconds=sent / link)
    step = sum(c["seconds"] for c in components.values())
    model_flops = model.flops_per_token(seq_len) * trainer_cfg.micro_batch_size * seq_len * accum
    return Roofline(gpu=gpu, precision=precision, integrator=integrator, components=components, step_seconds=step,
                    model_flops=model_flops, predicted_mfu=model_flops / (step * peak))


def format_roofline(r: Roofline, alternatives: Optional[dict] = None) -> str:
    """The per-component table and the predicted MFU (and, for INL, each integrator variant's)."""
    title = f"predicted step per GPU, {r.gpu} {r.precision}" + (f", integrator {r.integrator}" if r.integrator else "")
    rows = [(name, f"{c['flops'] / 1e12:,.1f}", f"{c['bytes'] / 1e9:,.1f}", f"{c['seconds'] * 1e3:,.1f}")
            for name, c in r.components.items() if c["seconds"]]
    rows.append(("step", f"{sum(c['flops'] for c in r.components.values()) / 1e12:,.1f}",
                 f"{sum(c['bytes'] for c in r.components.values()) / 1e9:,.1f}", f"{r.step_seconds * 1e3:,.1f}"))
    width = max(len(title), *(len(row[0]) for row in rows))
    lines = [f"| {title:<{width}} | TFLOP | GB | ms |", f"| {'-' * width} | ---: | ---: | ---: |"]
    lines += [f"| {name:<{width}} | {flops} | {gb} | {ms} |" for name, flops, gb, ms in rows]
    mfu = f"predicted MFU {r.predicted_mfu:.1%} (model FLOPs {r.model_flops / 1e12:,.1f} TFLOP per GPU and step)"
    if alternatives:
        mfu += "; by integrator: " + ", ".join(f"{v} {m:.1%}" for v, m in alternatives.items())
    return "\n".join(lines + ["", mfu])
