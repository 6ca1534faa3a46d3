"""Where NeuroGraph's Triton kernels can run: compiled on CUDA tensors, or through Triton's
interpreter on CPU tensors when TRITON_INTERPRET=1 was set before `triton` was imported
(Triton decides at import which of the two its `@triton.jit` functions become; the tests set it
in tests/kernels/conftest.py). Kernels compute in fp32: the interpreter's bf16 arithmetic is
wrong, while loading bf16 and converting is fine.
"""
from __future__ import annotations

import torch

try:
    import triton
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # the kernels modules define no kernels then; dispatch falls back
    triton = InterpretedFunction = None


def check_triton_device(op: str, kernel, x: torch.Tensor) -> None:
    """One clear error when `kernel` cannot run on x's device. Meta tensors pass: bench/gpu_resources.py
    launches the kernels on them to compile, never run, them."""
    if triton is None:
        raise RuntimeError(f"{op}: impl 'triton' needs the triton package (pip install triton)")
    if not (x.is_cuda or x.is_meta) and not isinstance(kernel, InterpretedFunction):
        raise RuntimeError(f"{op}: impl 'triton' runs on CUDA tensors; on CPU only through Triton's interpreter "
                           "(set TRITON_INTERPRET=1 before triton is imported)")


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
