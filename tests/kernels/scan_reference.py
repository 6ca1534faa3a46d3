"""mamba-ssm's Mamba block slow path re-stated for the tests, on its published scan reference."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from neurograph.kernels.selective_scan import selective_scan_materialised


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
    y = selective_scan_materialised(xi, dt, -torch.exp(blk.A_log), B.transpose(1, 2), C.transpose(1, 2), blk.D, z,
                                     blk.dt_proj.bias, delta_softplus=True)
    return y.transpose(1, 2) @ blk.out_proj.weight.T
