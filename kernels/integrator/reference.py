"""Integrator-neuron iterations (INL) in PyTorch: the update, and all K iterations of a layer.

One iteration, given the controller's raw output `raw` [N, 4, D] (already modulated per
layer) and the state (z, v) [N, D] around the equilibrium mu [D]:

    alpha = sigmoid(raw[:, 0])   in (0, 1)     damping
    beta  = softplus(raw[:, 1])  > 0           restoring force
    gate  = sigmoid(raw[:, 2])   in (0, 1)     output gate
    v_target = raw[:, 3]                       target velocity
    error = z - mu
    v = alpha * v + (1 - alpha) * v_target - beta * error   (+ excitation, training only)
    z = z + dt * gate * v

`integrator_step` is that iteration, written with fused primitives (lerp, addcmul);
`integrator_iterations_reference` runs K of them with the controller MLP, the reference of the
compiled and Triton paths.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

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
