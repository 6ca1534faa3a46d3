"""mamba-ssm's pure-PyTorch references re-stated for the tests (scan, and the Mamba block's slow path)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mamba_ssm_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """mamba-ssm's selective_scan_ref (mamba_ssm/ops/selective_scan_interface.py) for real A and
    per-step B, C [b, n, l], re-stated without its fp32 cast: the discretised deltaA and
    deltaB_u [b, d, l, n] are materialised by einsum, then the states are summed up step by step."""
    delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = A.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    out = (torch.stack(ys, dim=2) + u * D[:, None]) * F.silu(z)
    return out, x


def mamba_simple_forward(blk, x: torch.Tensor) -> torch.Tensor:
    """mamba-ssm's `mamba_simple.Mamba.forward` without the fused kernels (x [B, T, D] -> [B, T, D]),
    on a NeuroGraph MambaBlock's weights: in_proj, depthwise causal Conv1d (padding K-1, cut to T),
    SiLU, x_proj -> (dt, B, C), dt_proj without bias, scan with softplus(dt + bias), out_proj."""
    t = x.shape[1]
    xi, z = (x @ blk.in_proj.weight.T).transpose(1, 2).chunk(2, dim=1)  # [B, d_inner, T]
    xi = F.silu(F.conv1d(xi, blk.conv_weight[:, None, :], blk.conv_bias, padding=blk.d_conv - 1,
                         groups=blk.d_inner)[..., :t])
    dt, B, C = (xi.transpose(1, 2) @ blk.x_proj.weight.T).split([blk.dt_rank, blk.d_state, blk.d_state], dim=-1)
    dt = (dt @ blk.dt_proj.weight.T).transpose(1, 2)
    y, _ = mamba_ssm_reference(xi, dt, -torch.exp(blk.A_log), B.transpose(1, 2), C.transpose(1, 2), blk.D, z,
                               blk.dt_proj.bias, delta_softplus=True)
    return y.transpose(1, 2) @ blk.out_proj.weight.T
