"""The INL card's integrator re-stated from its equations (tests compare the models with it)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


def card_integrator(ctrl, mu: torch.Tensor, z: torch.Tensor, h: torch.Tensor, iterations: int, dt: float,
                    layer: int = 0, excitation: Optional[Callable[[int], torch.Tensor]] = None) -> torch.Tensor:
    """z_0, h [N, D]; mu [D] -> z_K [N, D]. The controller is read as a two-layer MLP on [h, z, v]
    with per-layer scale/bias on its four outputs; `excitation(k)` is added to the velocity."""
    d = z.shape[-1]
    v = torch.zeros_like(z)
    for k in range(iterations):
        hidden = torch.relu(torch.cat([h, z, v], -1) @ ctrl.fc_in.weight.T + ctrl.fc_in.bias)
        raw = (hidden @ ctrl.fc_out.weight.T + ctrl.fc_out.bias).view(-1, 4, d)
        if ctrl.layer_scale is not None:
            raw = raw * ctrl.layer_scale[layer][:, None] + ctrl.layer_bias[layer][:, None]
        alpha, beta, gate, v_target = torch.sigmoid(raw[:, 0]), F.softplus(raw[:, 1]), torch.sigmoid(raw[:, 2]), raw[:, 3]
        v = alpha * v + (1 - alpha) * v_target - beta * (z - mu)
        if excitation is not None:
            v = v + excitation(k)
        z = z + dt * gate * v
    return z
