"""Integrator-neuron iterations (INL): the hot per-token, per-channel update.

One iteration, given the controller's raw output `raw` [N, 4, D] (already modulated per
layer) and the state (z, v) [N, D] around the equilibrium mu [D]:

    alpha = sigmoid(raw[:, 0])   in (0, 1)     damping
    beta  = softplus(raw[:, 1])  > 0           restoring force
    gate  = sigmoid(raw[:, 2])   in (0, 1)     output gate
    v_target = raw[:, 3]                       target velocity
    error = z - mu
    v = alpha * v + (1 - alpha) * v_target - beta * error   (+ excitation, training only)
    z = z + dt * gate * v

`integrator_step` is that iteration in plain PyTorch, written with fused primitives (lerp, addcmul).

`integrator_iterations` / `integrator_adaptive` are the dispatch for all K iterations of a layer
with the controller MLP (pre = ctx + z Wz^T + v Wv^T; raw = (relu(pre) Wout^T + b) * scale + shift):
impl "triton" runs them in one kernel (kernels/integrator_triton.py, CUDA, or CPU under
TRITON_INTERPRET=1), "reference" as the PyTorch loop below, "compiled" as that same loop under
`torch.compile(fullgraph=True)`: all K iterations and the gating one graph (a graph break is an
error), compiled once per configuration with the token dimension dynamic. "auto" takes "compiled"
on CUDA tensors, the loop elsewhere: on an H200 the kernel measured 0.29x (D 128) and 0.67x (D 1728)
the eager loop's speed, and a training step of the 1.1B's width 0.74x (BENCHMARKS.md, 2026-11-30; the
kernel before its issue-26 rewrite, which is not measured on a GPU yet), so it stays opt-in until it
beats the compiled loop; on CPU the compiled loop is not measured faster and
costs seconds of compilation per graph.

Analysis helpers for the linear (frozen-parameter) dynamics live here too: with constant
alpha, beta, gate, v_target = 0 and p = dt * gate * beta, the error e = z - mu and the
scaled velocity w = dt * gate * v evolve as [e, w]' = M [e, w] with
M = [[1 - p, alpha], [-p, alpha]], trace 1 + alpha - p, determinant alpha.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F

# Controller output biases giving alpha ~ 0.8, beta ~ 0.5, gate ~ 0.5, v_target ~ 0.
ALPHA_INIT, BETA_INIT, GATE_INIT = 0.8, 0.5, 0.5


def inverse_sigmoid(p: float) -> float:
    return math.log(p / (1.0 - p))


def inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


INIT_RAW_BIAS = (inverse_sigmoid(ALPHA_INIT), inverse_softplus(BETA_INIT), inverse_sigmoid(GATE_INIT), 0.0)


def controller_activations(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """raw [..., 4, D] -> (alpha, beta, gate, v_target), each [..., D], in their ranges."""
    return torch.sigmoid(raw[..., 0, :]), F.softplus(raw[..., 1, :]), torch.sigmoid(raw[..., 2, :]), raw[..., 3, :]


def integrator_dynamics(z: torch.Tensor, v: torch.Tensor, mu: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                        gate: torch.Tensor, v_target: torch.Tensor, dt: float,
                        excitation: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The card's update with explicit coefficients (any broadcastable shapes)."""
    v_new = alpha * v + (1 - alpha) * v_target - beta * (z - mu)
    if excitation is not None:
        v_new = v_new + excitation
    return z + dt * gate * v_new, v_new


def integrator_step(z: torch.Tensor, v: Optional[torch.Tensor], mu: torch.Tensor, raw: torch.Tensor, dt: float,
                    excitation: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One iteration from raw controller output. z [N, D]; v [N, D] or None for v = 0; mu [D];
    raw [N, 4, D]; excitation [N, D] or None. Returns (z_new, v_new)."""
    alpha, beta, gate, v_target = controller_activations(raw)
    # alpha*v + (1-alpha)*v_target == lerp(v_target, v, alpha)
    v_new = v_target - alpha * v_target if v is None else torch.lerp(v_target, v, alpha)
    v_new = torch.addcmul(v_new, beta, z - mu, value=-1.0)
    if excitation is not None:
        v_new = v_new + excitation
    z_new = torch.addcmul(z, gate, v_new, value=dt)
    return z_new, v_new


# ---------------------------------------------------------------- K iterations of one layer
ITERATION_IMPLS = ("auto", "reference", "compiled", "triton")


def integrator_iterations_reference(z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt: float, K: int,
                                    min_iterations: Optional[int] = None, threshold: float = 0.0,
                                    mask: Optional[torch.Tensor] = None, waves: Optional[torch.Tensor] = None):
    """K iterations with the controller in PyTorch: z0 [N, D], ctx [N, r], wz, wv [r, D], wout [4D, r],
    bout [4D], scale, shift [4], mu [D] -> z_K [N, D]. Excitation: waves [K, D] add mask * waves[k]
    (mask [N, D]) or waves[k] (no mask) to iteration k's velocity. With `min_iterations` (adaptive
    stopping, the Triton kernel's masked form): after it, a token whose last update has norm <
    threshold keeps its z; returns (z, iterations per token [N] int32) then."""
    z, v, d, prev = z0, None, z0.shape[-1], z0
    active = torch.ones(z0.shape[0], dtype=torch.bool, device=z0.device)
    iters = torch.zeros(z0.shape[0], dtype=torch.int32, device=z0.device)
    for k in range(K):
        pre = ctx + z @ wz.T + (0.0 if v is None else v @ wv.T)
        raw = torch.addmm(bout, F.relu(pre), wout.T).view(-1, 4, d) * scale[:, None] + shift[:, None]
        excitation = None if waves is None else waves[k] if mask is None else mask * waves[k]
        z_new, v_new = integrator_step(z, v, mu, raw, dt, excitation)
        if min_iterations is not None:
            if k >= min_iterations:
                active = active & ((z - prev).norm(dim=-1) >= threshold)
            z_new = torch.where(active[:, None], z_new, z)
            v_new = torch.where(active[:, None], v_new, v if v is not None else 0.0)
            iters += active.to(torch.int32)
            prev = z
        z, v = z_new, v_new
    return z if min_iterations is None else (z, iters)


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
        from .integrator_triton import integrator_iterations_triton

        return integrator_iterations_triton(z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt, K, mask, waves)
    return _iterations(impl, z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt, K, mask=mask, waves=waves)


@torch.no_grad()
def integrator_adaptive(z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt: float, K: int, min_iterations: int,
                        threshold: float, impl: str = "auto", waves: Optional[torch.Tensor] = None):
    """Inference with per-token adaptive stopping: (z [N, D], iterations per token [N] int32). The
    masked form has no data-dependent exit, so it compiles whole too."""
    impl = resolve_impl(impl, z0.device)
    if impl == "triton":
        from .integrator_triton import integrator_adaptive_triton

        return integrator_adaptive_triton(z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt, K, min_iterations, threshold,
                                          waves)
    return _iterations(impl, z0, ctx, wz, wv, wout, bout, scale, shift, mu, dt, K, min_iterations, threshold, waves=waves)


# ---------------------------------------------------------------- linear-dynamics analysis
def linear_dynamics_matrix(alpha: float, p: float) -> torch.Tensor:
    """M with [e, w]_{k+1} = M [e, w]_k, e = z - mu, w = dt*gate*v (constant coefficients, v_target = 0)."""
    return torch.tensor([[1.0 - p, alpha], [-p, alpha]], dtype=torch.float64)


def spectral_radius(alpha: float, p: float) -> float:
    """Closed form of rho(M): roots of l^2 - (1 + alpha - p) l + alpha = 0."""
    tr, det = 1.0 + alpha - p, alpha
    disc = tr * tr - 4.0 * det
    if disc < 0:  # complex pair, |l|^2 = det
        return math.sqrt(det)
    s = math.sqrt(disc)
    return max(abs((tr + s) / 2.0), abs((tr - s) / 2.0))


def is_stable(alpha: float, p: float) -> bool:
    """Jury's criterion for the 2x2 system; for 0 <= alpha < 1 it reduces to the card's 0 < p < 2(1 + alpha)."""
    return abs(alpha) < 1.0 and p > 0.0 and p < 2.0 * (1.0 + alpha)
