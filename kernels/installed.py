"""What the ops' `auto` choices need to know without importing triton (importing it fixes whether
the kernels compile or run interpreted, kernels/triton_runtime.py): whether it is installed."""
from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    """True when the triton package is installed (found, not imported)."""
    return importlib.util.find_spec("triton") is not None
