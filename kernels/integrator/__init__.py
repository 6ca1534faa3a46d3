"""Integrator-neuron iterations (INL): the one dispatch for all K iterations of a layer.

`integrator_iterations` / `integrator_adaptive` run the K iterations of reference.py's update with
the controller MLP (pre = ctx + z Wz^T + v Wv^T; raw = (relu(pre) Wout^T + b) * scale + shift):
impl "reference" as reference.py's PyTorch loop, "compiled" as that same loop under
`torch.compile(fullgraph=True)`: all K iterations and the gating one graph (a graph break is an
error), compiled once per configuration with the token dimension dynamic; "triton" in one kernel
(triton.py, CUDA, or CPU under TRITON_INTERPRET=1). "auto" takes "compiled" on CUDA tensors, the
loop elsewhere: on an H200 the kernel measured 0.29x (D 128) and 0.67x (D 1728) the eager loop's
speed, and a training step of the 1.1B's width 0.74x (BENCHMARKS.md, 2026-11-30; the kernel before
its issue-26 rewrite, which is not measured on a GPU yet), so it stays opt-in until it beats the
compiled loop; on CPU the compiled loop is not measured faster and costs seconds of compilation per
graph. linear_dynamics.py analyses the update's frozen-parameter dynamics (stability).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from .linear_dynamics import is_stable, linear_dynamics_matrix, spectral_radius
from .reference import (ALPHA_INIT, BETA_INIT, GATE_INIT, INIT_RAW_BIAS, controller_activations, integrator_dynamics,
                        integrator_iterations_reference, integrator_step)

__all__ = ["ALPHA_INIT", "BETA_INIT", "GATE_INIT", "INIT_RAW_BIAS", "ITERATION_IMPLS", "controller_activations",
           "integrator_adaptive", "integrator_dynamics", "integrator_iterations", "integrator_iterations_reference",
           "integrator_step", "is_stable", "linear_dynamics_matrix", "resolve_impl", "spectral_radius",
           "use_fused_iterations"]

ITERATION_IMPLS = ("auto", "reference", "compiled", "triton")


def resolve_impl(impl: str, device: torch.device) -> str:
    """The impl that runs on `device`: "auto" is "compiled" on CUDA, "reference" elsewhere."""
    if impl not in ITERATION_IMPLS:
        raise ValueError(f"unknown integrator impl {impl!r}; choose from {ITERATION_IMPLS}")
    if impl == "auto":
        return "compiled" if device.type == "cuda" else "reference"
    return impl


def use_fused_iterations(impl: str, device: torch.device) -> bool:
    """Whether all K iterations run as one unit through `integrator_iterations` (compiled or Triton)."""
    return resolve_impl(impl, device) != "reference"


@functools.cache
def _compiled_reference():
    return torch.compile(integrator_iterations_reference, fullgraph=True)


def _iterations(impl: str, z0, ctx, *args, mask=None, **kwargs):
    """The reference loop, eager or compiled; compiled, the token dimension is dynamic (one graph for every N)."""
    if impl == "reference" or torch.compiler.is_compiling():  # inside a compiled region: traced into it
        return integrator_iterations_reference(z0, ctx, *args, mask=mask, **kwargs)
    for x in (z0, ctx, mask):
        if x is not None:
            torch._dynamo.maybe_mark_dynamic(x, 0)
    return _compiled_reference()(z0, ctx, *args, mask=mask, **kwargs)


def integrator_iterations(z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt: float, K: int, impl: str = "auto",
                          mask: Optional[torch.Tensor] = None, waves: Optional[torch.Tensor] = None):
    """z_K of K iterations (arguments as for the reference), differentiable."""
    impl = resolve_impl(impl, z0.device)
    if impl == "triton":
        from .triton import integrator_iterations_triton

        return integrator_iterations_triton(z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt, K, mask, waves)
    return _iterations(impl, z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt, K, mask=mask, waves=waves)


@torch.no_grad()
def integrator_adaptive(z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt: float, K: int, min_iterations: int,
                        threshold: float, impl: str = "auto", waves: Optional[torch.Tensor] = None):
    """Inference with per-token adaptive stopping: (z [N, D], iterations per token [N] int32). The
    masked form has no data-dependent exit, so it compiles whole too."""
    impl = resolve_impl(impl, z0.device)
    if impl == "triton":
        from .triton import integrator_adaptive_triton

        return integrator_adaptive_triton(z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt, K, min_iterations, threshold,
                                          waves)
    return _iterations(impl, z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt, K, min_iterations, threshold, waves=waves)
