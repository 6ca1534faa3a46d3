"""kernels/integrator/: the iteration step against the card's formula, ranges, v = 0 path."""
from __future__ import annotations

import math

import pytest
import torch

from neurograph.kernels import integrator as K


def test_step_matches_card_formula():
    torch.manual_seed(0)
    n, d = 7, 12
    z, v, exc = torch.randn(3, n, d, dtype=torch.float64).unbind(0)
    mu = torch.randn(d, dtype=torch.float64)
    raw = torch.randn(n, 4, d, dtype=torch.float64) * 3
    alpha, beta, gate, vt = torch.sigmoid(raw[:, 0]), torch.nn.functional.softplus(raw[:, 1]), torch.sigmoid(raw[:, 2]), raw[:, 3]
    v_ref = alpha * v + (1 - alpha) * vt - beta * (z - mu) + exc
    z_ref = z + 0.1 * gate * v_ref
    z_new, v_new = K.integrator_step(z, v, mu, raw, 0.1, exc)
    assert torch.allclose(v_new, v_ref) and torch.allclose(z_new, z_ref)
    z0, v0 = K.integrator_step(z, None, mu, raw, 0.1)
    z1, v1 = K.integrator_step(z, torch.zeros_like(v), mu, raw, 0.1)
    assert torch.allclose(z0, z1) and torch.allclose(v0, v1)
    a, b, g, _ = K.controller_activations(raw * 100)
    assert bool(((a >= 0) & (a <= 1) & (b >= 0) & (g >= 0) & (g <= 1)).all())


def test_init_bias_and_stability_helpers():
    a, b, g, vt = K.controller_activations(torch.tensor(K.INIT_RAW_BIAS)[:, None])
    assert (a.item(), b.item(), g.item(), vt.item()) == pytest.approx((0.8, 0.5, 0.5, 0.0))
    assert K.spectral_radius(0.8, 0.025) == pytest.approx(math.sqrt(0.8))  # complex pair at init
    assert K.is_stable(0.5, 2.9) and not K.is_stable(0.5, 3.1)


def test_auto_impl_is_compiled_on_cuda_only():
    assert K.resolve_impl("auto", torch.device("cuda")) == "compiled"
    assert K.resolve_impl("auto", torch.device("cpu")) == "reference"
    assert K.use_fused_iterations("compiled", torch.device("cpu")) and not K.use_fused_iterations("auto", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown integrator impl"):
        K.resolve_impl("eager", torch.device("cpu"))
