"""The fused integrator iterations (kernels/integrator_triton.py) against the PyTorch reference:
z_K and the gradient of every input, and adaptive stopping's masks and iteration counts, with
outputs NaN-poisoned before each launch. Both forms of the kernels run: the state kept in registers
across iterations (D <= ON_CHIP_MAX_D, the default here) and the streamed tiles of wide D (forced by
lowering ON_CHIP_MAX_D)."""
from __future__ import annotations

import pytest
import torch

from neurograph.kernels import integrator_triton
from neurograph.kernels.integrator import integrator_adaptive, integrator_iterations, integrator_iterations_reference
from tests.kernels.conftest import assert_close

# the interpreter evaluates sigmoid as 1 / (1 + exp(-x)) in numpy: exp overflows to inf for very
# negative x, which gives the right limit (0) but warns
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

NAMES = ("z0", "ctx", "wz", "wv", "wout", "bout", "scale", "shift", "mu")


def _inputs(n, d, r, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    r_ = lambda *shape, std=1.0: torch.randn(*shape, generator=g) * std  # noqa: E731
    x = dict(z0=r_(n, d), ctx=r_(n, r, std=0.5), wz=r_(r, d, std=0.3), wv=r_(r, d, std=0.3), wout=r_(4 * d, r, std=0.3),
             bout=r_(4 * d, std=0.5), scale=1 + 0.2 * r_(4), shift=0.2 * r_(4), mu=0.3 * r_(d))
    return {k: v.to(device).requires_grad_() for k, v in x.items()}


@pytest.fixture(params=["on_chip", "streamed"])
def state_form(request, monkeypatch):
    """Which form of the kernels runs: "streamed" lowers ON_CHIP_MAX_D below every D tested."""
    if request.param == "streamed":
        monkeypatch.setattr(integrator_triton, "ON_CHIP_MAX_D", 0)
    return request.param


@pytest.mark.parametrize("n,d,r,K,excitation,state_form", [
    (37, 70, 16, 3, "masked", "on_chip"),   # tokens over several (partial) blocks; training excitation
    (37, 70, 16, 2, "masked", "streamed"),  # channels over several tiles, the last partial
    (5, 33, 24, 2, None, "on_chip"),        # rank not a power of two
    (1, 5, 8, 1, "expected", "on_chip"),    # one token, one iteration, rank below the dot minimum; eval excitation
    (20, 128, 64, 2, None, "on_chip"),      # the tiny INL's width and rank (on a GPU its tiles must fit shared memory)
], indirect=["state_form"])
def test_triton_iterations_match_reference(n, d, r, K, excitation, state_form, triton_device, poisoned):
    x = _inputs(n, d, r, triton_device)
    g = torch.Generator().manual_seed(1)
    gout = torch.randn(n, d, generator=g).to(triton_device)
    extra = {}
    if excitation:
        extra["waves"] = (0.5 * torch.randn(K, d, generator=g)).to(triton_device).requires_grad_()
    if excitation == "masked":
        extra["mask"] = (torch.rand(n, d, generator=g) < 0.3).float().to(triton_device)
    inputs = list(x.values()) + ([extra["waves"]] if excitation else [])
    results = []
    for impl in ("reference", "triton"):
        z = integrator_iterations(*x.values(), 0.1, K, impl=impl, **extra)
        results.append([z, *torch.autograd.grad((z * gout).sum(), inputs, allow_unused=True, materialize_grads=True)])
    names = ("z_K",) + tuple(f"grad {k}" for k in NAMES) + ("grad waves",)
    for a, e, name in zip(results[1], results[0], names):
        assert_close(a, e, name=name)


def test_triton_adaptive_stopping_masks(triton_device, poisoned, state_form):
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
