"""Analysis of the integrator's linear (frozen-parameter) dynamics.

With constant alpha, beta, gate, v_target = 0 and p = dt * gate * beta, the error e = z - mu and the
scaled velocity w = dt * gate * v evolve as [e, w]' = M [e, w] with M = [[1 - p, alpha], [-p, alpha]],
trace 1 + alpha - p, determinant alpha.
"""
from __future__ import annotations

import math

import torch


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
