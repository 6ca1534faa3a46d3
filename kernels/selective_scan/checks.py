"""The selective scan's input checks, shared by every path: shapes, dtypes and devices validated
before any kernel runs, and the cast to the compute dtype."""
from __future__ import annotations

from typing import Optional

import torch

_SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> torch.dtype:
    """Validate the arguments of every backend before any kernel runs: u, delta, z [Bz, d, T];
    A [d, S]; B, C [Bz, S, T]; D, delta_bias [d] (mamba-ssm's layout; D, z, delta_bias optional);
    floating point, on u's device, any strides (each backend builds the layout its kernel reads).
    Raises ValueError naming the argument and the shape expected. Returns the compute dtype:
    float64 when any input is float64 (the reference's type promotion), else float32."""
    given = dict(zip(_SCAN_ARGS, (u, delta, A, B, C, D, z, delta_bias)))
    for name, x in given.items():
        if x is not None and not isinstance(x, torch.Tensor):
            raise ValueError(f"selective scan: {name} must be a tensor, got {type(x).__name__}")
    for name in ("u", "delta", "A", "B", "C"):
        if given[name] is None:
            raise ValueError(f"selective scan: {name} is required")
    if u.dim() != 3:
        raise ValueError(f"selective scan: u must be [Bz, d, T] (3 dimensions), got shape {list(u.shape)}")
    bz, d, t = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective scan: A must be [d, S] with d = {d} (u's channels), got shape {list(A.shape)}")
    s = A.shape[1]
    expected = dict(u=(bz, d, t), delta=(bz, d, t), A=(d, s), B=(bz, s, t), C=(bz, s, t), D=(d,), z=(bz, d, t),
                    delta_bias=(d,))
    layout = dict(u="[Bz, d, T]", delta="[Bz, d, T]", A="[d, S]", B="[Bz, S, T]", C="[Bz, S, T]", D="[d]",
                  z="[Bz, d, T]", delta_bias="[d]")
    for name, x in given.items():
        if x is None:
            continue
        if tuple(x.shape) != expected[name]:
            raise ValueError(f"selective scan: {name} must be {layout[name]} = {list(expected[name])} "
                             f"(Bz, d, T from u, S from A), got shape {list(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"selective scan: {name} must be floating point, got {x.dtype}")
        if x.device != u.device:
            raise ValueError(f"selective scan: {name} is on {x.device}, u on {u.device}")
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in given.values()) else torch.float32


def scan_inputs(*args: Optional[torch.Tensor]) -> list[Optional[torch.Tensor]]:
    """(u, delta, A, B, C, D, z, delta_bias) checked and cast to the compute dtype."""
    dtype = check_scan_inputs(*args)
    return [None if x is None else x.to(dtype) for x in args]
