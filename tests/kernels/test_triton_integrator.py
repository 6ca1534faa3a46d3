"""The fused integrator iterations (kernels/integrator/triton.py) against the PyTorch reference:
z_K and the gradient of every input, and adaptive stopping's masks and iteration counts, with
outputs NaN-poisoned before each launch; fp32 (the dots at fp32 accuracy) and bf16 (the dots'
operands in bf16, against the fp32 reference at a bf16 tolerance)."""
from __future__ import annotations

import pytest
import torch

from neurograph.kernels.integrator import triton as integrator_triton
from neurograph.kernels.integrator import integrator_adaptive, integrator_iterations, integrator_iterations_reference
from tests.kernels.conftest import INTERPRETED, assert_close

# the interpreter evaluates sigmoid as 1 / (1 + exp(-x)) in numpy: exp overflows to inf for very
# negative x, which gives the right limit (0) but warns
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

NAMES = ("z0", "ctx", "wz", "wv", "wout", "bout", "scale", "shift", "mu")


def _inputs(n, d, r, device, seed=0, gain=1.0):
    g = torch.Generator().manual_seed(seed)
    r_ = lambda *shape, std=1.0: torch.randn(*shape, generator=g) * std  # noqa: E731
    w = gain * min(0.3, 3 / d**0.5)  # the input projection sums over D: wide D at 0.3 is ill-conditioned even in fp32
    x = dict(z0=r_(n, d), ctx=r_(n, r, std=0.5), wz=r_(r, d, std=w), wv=r_(r, d, std=w), wout=r_(4 * d, r, std=0.3 * gain),
             bout=r_(4 * d, std=0.5), scale=1 + 0.2 * r_(4), shift=0.2 * r_(4), mu=0.3 * r_(d))
    return {k: v.to(device).requires_grad_() for k, v in x.items()}


def _compare(n, d, r, K, excitation, device, dtype=torch.float32, rtol=1e-4, gain=1.0):
    """z_K and every gradient of the kernel, inputs in `dtype`, against the fp32 reference on the same values."""
    # values representable in dtype, so that the reference and the kernel start from the same inputs
    x = {k: v.detach().to(dtype).float() for k, v in _inputs(n, d, r, device, gain=gain).items()}
    g = torch.Generator().manual_seed(1)
    gout = torch.randn(n, d, generator=g).to(device)
    extra = {}
    if excitation:
        extra["waves"] = (0.5 * torch.randn(K, d, generator=g)).to(device).to(dtype).float()
    if excitation == "masked":
        extra["mask"] = (torch.rand(n, d, generator=g) < 0.3).float().to(device)
    results = []
    for impl, dt in (("reference", torch.float32), ("triton", dtype)):
        xs = {k: v.to(dt).requires_grad_() for k, v in x.items()}
        ex = {k: v.to(dt).requires_grad_(k == "waves") for k, v in extra.items()}
        inputs = list(xs.values()) + ([ex["waves"]] if excitation else [])
        z = integrator_iterations(*xs.values(), 0.1, K, impl=impl, **ex)
        assert z.dtype == dt
        results.append([z, *torch.autograd.grad((z.float() * gout).sum(), inputs, allow_unused=True, materialize_grads=True)])
    names = ("z_K",) + tuple(f"grad {k}" for k in NAMES) + ("grad waves",)
    for a, e, name in zip(results[1], results[0], names):
        assert a.dtype == dtype, name
        assert_close(a, e, rtol=rtol, name=name)


@pytest.mark.parametrize("n,d,r,K,excitation", [
    (21, 70, 16, 2, "masked"),  # tokens over two blocks, channels over several tiles, both partial; training excitation
    (5, 33, 24, 2, None),       # rank not a power of two
    (1, 5, 8, 1, "expected"),   # one token, one iteration, rank below the dot minimum; evaluation excitation
])
def test_triton_iterations_match_reference(n, d, r, K, excitation, triton_device, poisoned):
    _compare(n, d, r, K, excitation, triton_device)


@pytest.fixture
def wide_tiles(monkeypatch):
    """Under the interpreter, whose time goes per tile, D tiles of 256 (the GPU's tiles are 16 and 32 wide:
    the odd sizes above run several of them, the last partial)."""
    if INTERPRETED:
        monkeypatch.setattr(integrator_triton, "TILE_D", {False: 256, True: 256})


@pytest.mark.parametrize("d", [128, 256, 512, 1728])
def test_triton_iterations_shipped_widths(d, triton_device, poisoned, wide_tiles):
    """The shipped and default widths at the shipped rank (64), few tokens."""
    _compare(3, d, 64, 2, "masked", triton_device)


@pytest.mark.parametrize("n,d,excitation", [(5, 70, "masked"), (3, 128, None)])
def test_triton_iterations_bf16(n, d, excitation, triton_device, poisoned):
    """bf16 inputs: the dots' operands in bf16 (fp32 accumulation), everything else in fp32; against the
    fp32 reference on the same (bf16) values, within a few bf16 roundings. Weaker weights than the fp32
    cases: at those, rounding the dots' operands alone moves the gradients by 20-50% (chaotic dynamics,
    relu kinks), the kernel's error equal to a PyTorch loop's with the same roundings."""
    _compare(n, d, 64, 2, excitation, triton_device, dtype=torch.bfloat16, rtol=2e-2, gain=0.5)


def test_triton_adaptive_stopping_masks(triton_device, poisoned):
    """Tokens stop at different iterations (evaluation excitation on); z and the counts equal the
    masked reference, which equals running each token alone for its own count."""
    x = {k: v.detach() for k, v in _inputs(21, 40, 16, triton_device, seed=2).items()}
    K, first, dt = 6, 2, 0.5
    waves = 0.1 * torch.randn(K, 40, generator=torch.Generator().manual_seed(3)).to(triton_device)
    last_update = (integrator_iterations_reference(*x.values(), dt, first, waves=waves)
                   - integrator_iterations_reference(*x.values(), dt, first - 1, waves=waves)).norm(dim=-1).sort().values
    threshold = last_update[9:11].mean().item()  # between two tokens' updates: about half stop after `first`
    z_ref, it_ref = integrator_iterations_reference(*x.values(), dt, K, first, threshold, waves=waves)
    z, its = integrator_adaptive(*x.values(), dt, K, first, threshold, impl="triton", waves=waves)
    assert len(set(it_ref.tolist())) > 1, "the case must stop tokens at different iterations"
    assert torch.equal(its.cpu(), it_ref.cpu())
    assert_close(z, z_ref)
    rest = {k: v for k, v in x.items() if k not in ("z0", "ctx")}
    for i in range(0, 21, 4):  # each token alone, run for exactly its count
        n = int(its[i])
        alone = integrator_iterations_reference(x["z0"][i:i + 1], x["ctx"][i:i + 1], *rest.values(), dt, n, waves=waves[:n])
        assert_close(z[i:i + 1], alone)
    # every token stops after `first`: whole blocks skip the remaining iterations
    z, its = integrator_adaptive(*x.values(), dt, K, first, 1e9, impl="triton", waves=waves)
    assert its.tolist() == [first] * 21
    assert_close(z, integrator_iterations_reference(*x.values(), dt, first, waves=waves[:first]))
