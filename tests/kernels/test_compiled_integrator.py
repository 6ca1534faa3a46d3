"""The compiled integrator (impl "compiled": the reference loop under torch.compile(fullgraph=True))
against the eager loop on CPU: z_K and every gradient at two token counts served by one graph,
adaptive stopping, and a tiny INL model's logits and gradients. Each test compiles one graph
(seconds on CPU)."""
from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from neurograph.kernels.integrator import integrator_adaptive, integrator_iterations, integrator_iterations_reference
from neurograph.model.inl import INLConfig, INLModel
from tests.kernels.conftest import assert_close
from tests.kernels.test_triton_integrator import NAMES, _inputs

RTOL = 1e-5


def test_compiled_iterations_match_loop_one_graph_for_every_token_count():
    """Training form (excitation mask and waves); the second token count reuses the first's graph."""
    d, r, K = 33, 16, 2
    graphs = counters["stats"]["unique_graphs"]
    for n in (37, 5):
        x = _inputs(n, d, r, "cpu", seed=n)
        g = torch.Generator().manual_seed(n)
        waves = (0.5 * torch.randn(K, d, generator=g)).requires_grad_()
        mask = (torch.rand(n, d, generator=g) < 0.3).float()
        gout = torch.randn(n, d, generator=g)
        inputs = [*x.values(), waves]
        results = []
        with torch._dynamo.config.patch(error_on_recompile=n != 37):
            for impl in ("reference", "compiled"):
                z = integrator_iterations(*x.values(), 0.1, K, impl=impl, mask=mask, waves=waves)
                results.append([z, *torch.autograd.grad((z * gout).sum(), inputs)])
        for a, e, name in zip(results[1], results[0], ("z_K", *(f"grad {k}" for k in NAMES), "grad waves")):
            assert_close(a, e, rtol=RTOL, name=f"{name}, n {n}")
    assert counters["stats"]["unique_graphs"] == graphs + 1


def test_compiled_adaptive_matches_loop():
    """Tokens stop at different iterations: the same z and counts as the masked loop."""
    x = {k: v.detach() for k, v in _inputs(21, 40, 16, "cpu", seed=2).items()}
    K, first, dt = 4, 2, 0.5
    waves = 0.1 * torch.randn(K, 40, generator=torch.Generator().manual_seed(3))
    last_update = (integrator_iterations_reference(*x.values(), dt, first, waves=waves)
                   - integrator_iterations_reference(*x.values(), dt, first - 1, waves=waves)).norm(dim=-1).sort().values
    threshold = last_update[9:11].mean().item()  # about half the tokens stop after `first`
    z_ref, it_ref = integrator_adaptive(*x.values(), dt, K, first, threshold, impl="reference", waves=waves)
    z, its = integrator_adaptive(*x.values(), dt, K, first, threshold, impl="compiled", waves=waves)
    assert len(set(it_ref.tolist())) > 1
    assert torch.equal(its, it_ref)
    assert_close(z, z_ref, rtol=RTOL)


def test_inl_compiled_matches_reference():
    """A tiny INL in training (excitation on, the same masks): logits and every parameter gradient."""
    cfg = dict(vocab_size=50, d_model=48, n_layer=2, n_head=4, num_iterations=2, controller_rank=16, max_seq_len=16,
               excitation_sparsity=0.3)
    torch.manual_seed(0)
    models = [INLModel(INLConfig(**cfg, integrator_impl=impl)) for impl in ("reference", "compiled")]
    models[1].load_state_dict(models[0].state_dict())
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    outs = []
    for model in models:
        torch.manual_seed(1)
        logits = model(ids)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
        outs.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert_close(outs[1][0], outs[0][0], rtol=RTOL, name="logits")
    for name, grad in outs[0][1].items():
        assert_close(outs[1][1][name], grad, rtol=RTOL, name=f"grad {name}")
