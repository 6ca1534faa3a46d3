"""The selective scan's PyTorch references: a step-by-step loop and mamba-ssm's published reference.

`selective_scan_ref` ("sequential") and `selective_scan_materialised` (mamba-ssm's
`selective_scan_ref`, not a dispatch choice) are what every other path is tested against.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .checks import scan_inputs

def prepare_delta(delta: torch.Tensor, delta_bias: Optional[torch.Tensor], delta_softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    return F.softplus(delta) if delta_softplus else delta


def finish(y: torch.Tensor, u: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
            dtype: torch.dtype) -> torch.Tensor:
    """Skip term and gate, shared by the PyTorch paths: y [B, d, T] in compute dtype -> output dtype."""
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y.to(dtype)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Sequential reference: one step of the recurrence per time step, in fp32 (fp64 when any
    input is fp64); the output has u's dtype. T = 0 gives an empty y and a zero last state."""
    dtype = u.dtype
    u, delta, A, B, C, D, z, delta_bias = scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    delta = prepare_delta(delta, delta_bias, delta_softplus)  # [B, d, T]
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # [B, d, S]
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)  # [B, d, S]
        h = decay * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append(torch.einsum("bds,bs->bd", h, C[:, :, t]))
    y = finish(torch.stack(ys, dim=2) if ys else u[:, :, :0] * 0, u, D, z, dtype)
    return (y, h) if return_last_state else y


def selective_scan_materialised(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                return_last_state=False):
    """mamba-ssm's published `selective_scan_ref` (mamba_ssm/ops/selective_scan_interface.py) for
    real A and per-step B, C, in the inputs' dtype: exp(delta * A) and delta * B * u [B, d, T, S]
    are materialised for the whole sequence, then the states are summed step by step. Written
    apart from `selective_scan_ref` on purpose: it is the tests' independent oracle and the "as
    published" baseline of bench/inn.py."""
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = A.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = delta_a[:, :, t] * h + delta_b_u[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return (y, h) if return_last_state else y
