"""Triton kernels in tests: compiled on a CUDA device where there is one, else through Triton's
interpreter on CPU tensors. Triton fixes which of the two its `@triton.jit` functions become when
they are defined, so TRITON_INTERPRET=1 is set here only while triton and the kernel modules are
imported (collection of tests/kernels), then replaced by triton's own knob, so the environment of
other tests and their subprocesses stays clean."""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

TRITON_MODULES = ("neurograph.kernels.selective_scan.triton", "neurograph.kernels.integrator.triton",
                  "neurograph.kernels.neuron_attention.triton", "neurograph.kernels.causal_conv1d.triton")
ON_GPU = torch.cuda.is_available()


def _import_interpreted() -> bool:
    """Import triton and the kernels interpreted; False when triton was already imported compiled."""
    if importlib.util.find_spec("triton") is None:
        return False
    if "triton" in sys.modules:
        return bool(sys.modules["triton"].knobs.runtime.interpret)
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton

        triton.knobs.runtime.interpret = True  # triton's own later imports check it too
        _scan_by_slices()
        for name in TRITON_MODULES:
            importlib.import_module(name)
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before
    return True


def _scan_by_slices() -> None:
    """Triton's interpreter runs a `tl.associative_scan` with a user combine function one element at a
    time in Python (~10^4 calls per tile of the selective scan); this runs the same sequential fold one
    slice along the axis at a time (the combine functions are elementwise)."""
    from triton.runtime.interpreter import ScanOps

    def generic_scan(self, input):
        data = [x.handle.data for x in input]
        out = [np.empty_like(x) for x in data]
        acc = None
        for i in range(data[0].shape[self.axis]):
            step = tuple(self.to_tensor(np.take(x, [i], axis=self.axis), a.dtype) for x, a in zip(data, input))
            acc = step if acc is None else self.combine_fn.fn(*acc, *step)
            acc = acc if isinstance(acc, tuple) else (acc,)
            for o, a in zip(out, acc):
                np.put_along_axis(o, np.full_like(a.handle.data, i, dtype=np.int64), a.handle.data, self.axis)
        return [self.to_tensor(o, a.dtype) for o, a in zip(out, input)]

    ScanOps.generic_scan = generic_scan


INTERPRETED = not ON_GPU and _import_interpreted()


@pytest.fixture
def triton_device() -> str:
    """The device Triton kernels run on here: "cuda", or "cpu" through the interpreter."""
    if ON_GPU:
        return "cuda"
    if importlib.util.find_spec("triton") is None:
        pytest.skip("no CUDA and no triton")
    if not INTERPRETED:  # a failure, not a skip: CI would silently stop testing the kernels
        pytest.fail("triton was imported (compiled) before tests/kernels/conftest.py could enable its interpreter: "
                    "a module imported while collecting earlier tests imports triton (torch.utils.flop_counter does)")
    return "cpu"


@pytest.fixture
def poisoned(monkeypatch):
    """Every uninitialised floating-point tensor (torch.empty, empty_like, new_empty) starts as NaN
    during the test, so an element a kernel fails to write shows up in the comparison."""
    def poison(fn):
        def wrapped(*args, **kwargs):
            x = fn(*args, **kwargs)
            return x.fill_(float("nan")) if x.is_floating_point() else x
        return wrapped

    for owner, name in ((torch, "empty"), (torch, "empty_like"), (torch.Tensor, "new_empty")):
        monkeypatch.setattr(owner, name, poison(getattr(owner, name)))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4, name: str = "") -> None:
    """Relative agreement: every element within rtol of the reference's largest magnitude, taken as at least
    1e-2: where the exact value is zero, like q's gradient through a softmax over one neuron, both sides are
    fp32 rounding of O(1) terms (~1e-7 here, measured), which must compare too."""
    assert actual.shape == expected.shape, name
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=rtol * max(scale, 1e-2), msg=name or None)
