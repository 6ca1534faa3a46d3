"""INN (SPEC section 2): parameter count, causality, recurrent decoding, routing equivalences,
symmetry breaking after real training."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F

from neurograph.model import build_model
from neurograph.model.inn import INNConfig
from neurograph.model.neuron_router import DenseRouter, HierarchicalRouter, TopKRouter

ROUTINGS = ["dense", "none", "static", "topk", "hierarchical"]
PAPER_PARAMS = 4_227_328  # N=32, D=256, S=16, L=6, 4 heads, vocab 27, identity vectors on


def small_inn(seed=0, **kw):
    cfg = dict(arch="inn", vocab_size=27, d_model=32, n_neurons=8, n_layer=2, n_head=2, d_state=4,
               dropout=0.0, topk=3, group_size=4)
    cfg.update(kw)
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def test_paper_config_parameter_count():
    m = build_model(dict(arch="inn", vocab_size=27, n_neurons=32, d_model=256, d_state=16, n_layer=6, n_head=4))
    n = sum(p.numel() for p in m.parameters())
    assert n == PAPER_PARAMS
    assert abs(n - 4.2e6) / 4.2e6 < 0.05
    # The authors' symmetric variant differs only by the N x D identity vectors.
    sym = build_model(dict(arch="inn", vocab_size=27, neuron_identity="none"))
    assert n - sum(p.numel() for p in sym.parameters()) == 32 * 256


@pytest.mark.parametrize("routing", ROUTINGS)
def test_causal(routing):
    m = small_inn(routing=routing, per_neuron_conv=True)
    x = torch.randint(0, 27, (2, 24))
    x2 = x.clone()
    x2[:, 15] = (x2[:, 15] + 5) % 27
    a, b = m(x), m(x2)
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=0, atol=0)
    assert (a[:, 15] - b[:, 15]).abs().max() > 1e-4


@pytest.mark.parametrize("routing", ROUTINGS)
def test_step_decoding_equals_full_forward(routing):
    m = small_inn(routing=routing, per_neuron_conv=True, adapter_rank=2)
    for layer in m.layers:
        torch.nn.init.normal_(layer.memory.adapter_up, std=0.1)
    x = torch.randint(0, 27, (2, 13))
    full = m(x)
    logits, state = m.prefill(x[:, :5])
    outs = [logits]
    for t in range(5, 13):
        lg, state = m.decode_step(x[:, t], state)
        outs.append(lg[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-4, atol=1e-5)


def test_generate_greedy_equals_recomputation():
    m = small_inn(routing="dense")
    prompt = torch.randint(0, 27, (2, 6))
    out = m.generate(prompt, 5)  # greedy, recurrent state
    ids = prompt
    for _ in range(5):
        ids = torch.cat([ids, m(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    assert torch.equal(m.generate(prompt, 5, use_cache=False), ids)
    sample = lambda: m.generate(prompt, 5, temperature=0.8, top_k=3, do_sample=True,  # noqa: E731
                                generator=torch.Generator().manual_seed(0))
    sampled = sample()
    assert sampled.shape == (2, 11) and torch.equal(sampled[:, :6], prompt) and torch.equal(sample(), sampled)


def _same_weights_as(model, reference):
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and all(re.search(r"sketch$", k) for k in missing), (missing, unexpected)
    return model


def test_topk_with_k_equal_n_equals_dense():
    dense = small_inn(routing="dense")
    topk = _same_weights_as(small_inn(seed=1, routing="topk", topk=8), dense)
    x = torch.randint(0, 27, (2, 9))
    torch.testing.assert_close(topk(x), dense(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sketch_dim", [0, 8])
def test_topk_equals_dense_attention_masked_to_the_selected_neurons(sketch_dim):
    torch.manual_seed(0)
    router = TopKRouter(32, 4, 0.0, k=3, sketch_dim=sketch_dim).eval()
    m = torch.randn(5, 10, 32)
    q, k, v = router.heads(m)
    idx = router.select(q, k)  # [M, N, k]
    assert idx.shape == (5, 10, 3)
    if sketch_dim == 0:  # exact: the k largest head-summed q.k
        scores = torch.einsum("mihd,mjhd->mij", q, k)
        assert torch.equal(idx.sort(-1).values, scores.topk(3, -1).indices.sort(-1).values)
    allowed = torch.zeros(5, 10, 10, dtype=torch.bool).scatter_(2, idx, True)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=allowed[:, None])
    expected = router.out(y.transpose(1, 2).reshape(5, 10, 32))
    torch.testing.assert_close(router(m), expected, rtol=1e-5, atol=1e-5)


def test_hierarchical_with_one_group_equals_dense():
    dense = small_inn(routing="dense")
    hier = small_inn(seed=1, routing="hierarchical", group_size=8)
    hier.load_state_dict({k.replace(".router.", ".router.local."): v for k, v in dense.state_dict().items()})
    x = torch.randint(0, 27, (2, 9))
    torch.testing.assert_close(hier(x), dense(x), rtol=1e-6, atol=1e-6)


def test_hierarchical_levels_broadcast_group_results():
    """Three levels (64 -> 16 -> 4 summaries): each neuron gets its group's attention output
    plus its group's upper-level output."""
    torch.manual_seed(0)
    router = HierarchicalRouter(16, 2, 0.0, n_neurons=64, group_size=4).eval()
    assert isinstance(router.upper, HierarchicalRouter) and isinstance(router.upper.upper, DenseRouter)
    m = torch.randn(3, 64, 16)
    groups = m.view(3, 16, 4, 16)
    expected = router.local(groups.reshape(48, 4, 16)).view(3, 16, 4, 16) + router.upper(groups.mean(2))[:, :, None]
    torch.testing.assert_close(router(m), expected.view(3, 64, 16), rtol=1e-6, atol=1e-6)
    # Changing one neuron changes every neuron's output (information crosses all groups) ...
    m2 = m.clone()
    m2[:, 0] += 1.0
    assert ((router(m2) - router(m)).abs().amax(-1) > 1e-6).all()


@pytest.mark.parametrize("routing", ["topk", "hierarchical"])
def test_sparse_routing_cost_per_neuron_is_flat(routing):
    costs = {}
    for n in (32, 4096):
        cfg = INNConfig(vocab_size=27, n_neurons=n, routing=routing, topk=8, group_size=32)
        layer_router = build_model(dataclasses.replace(cfg, n_layer=1, d_model=256)).layers[0].router
        costs[n] = layer_router.flops_per_neuron(n)
    assert costs[4096] / costs[32] < 1.5
    dense = DenseRouter(256, 4, 0.0)
    assert dense.flops_per_neuron(4096) / dense.flops_per_neuron(32) > 3


def test_large_n_hierarchical_runs():
    m = small_inn(routing="hierarchical", n_neurons=1024, group_size=32, d_model=16, n_layer=1, d_state=2)
    x = torch.randint(0, 27, (1, 5))
    assert m(x).shape == (1, 5, 27)


def test_static_routing_is_not_trained():
    m = small_inn(routing="static")
    router = m.layers[0].router
    assert "layers.0.router.mixing" in dict(m.named_buffers())
    assert not any("mixing" in n for n, _ in m.named_parameters())
    torch.testing.assert_close(router.mixing.sum(-1), torch.ones(8))


def test_bad_hierarchical_grouping_is_rejected():
    with pytest.raises(ValueError):
        INNConfig(vocab_size=27, n_neurons=48, routing="hierarchical", group_size=32)


def neuron_spread(model, x) -> float:
    """Mean distance of each neuron's final-layer state from the neuron mean, relative to the
    norm of the mean: 0 when all neurons carry the same state."""
    with torch.no_grad():
        h = model.neuron_states(x)  # [B, N, T, D]
    mean = h.mean(1, keepdim=True)
    return ((h - mean).norm(dim=-1).mean() / mean.norm(dim=-1).mean()).item()


@pytest.mark.parametrize("breaking,min_spread", [
    (dict(neuron_identity="embedding"), 0.01),                          # measured 0.033
    (dict(neuron_identity="embedding", per_neuron_conv=True), 0.05),    # measured 0.13
    (dict(neuron_identity="none", adapter_rank=4), 0.01),               # measured 0.028
    (dict(neuron_identity="none"), None),                               # the authors' variant: 0
])
def test_training_leaves_neurons_distinct_only_with_symmetry_breaking(breaking, min_spread):
    """40 AdamW steps on real text (Shakespeare, text8-style 27 symbols) with dropout 0.1;
    metric: `neuron_spread` of the final-layer states on held-out text, in eval mode."""
    from tests.conftest import corpus_text

    text = re.sub(r"[^a-z]+", " ", corpus_text(chars=120_000).lower())
    data = torch.tensor([0 if c == " " else ord(c) - 96 for c in text])
    model = small_inn(routing="dense", dropout=0.1, n_neurons=4, **breaking)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    seq, batch, losses = 64, 8, []
    for _ in range(40):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        chunk = torch.stack([data[s : s + seq + 1] for s in starts])
        loss = F.cross_entropy(model(chunk[:, :-1]).flatten(0, 1), chunk[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5  # it learned something
    model.eval()
    spread = neuron_spread(model, data[-2000:].view(-1, 100)[:8])
    if min_spread is not None:
        assert spread > min_spread, spread
    else:
        assert spread < 1e-6, spread


def _authors_model_with_our_weights(model):
    """bench/inn.py's re-statement of the authors' model (plain sequential scan), loaded with the
    weights of a symmetric, dense-routing INN."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "inn.py"
    spec = importlib.util.spec_from_file_location("bench_inn", path)
    bench = sys.modules.get("bench_inn") or importlib.util.module_from_spec(spec)
    if "bench_inn" not in sys.modules:
        sys.modules["bench_inn"] = bench
        spec.loader.exec_module(bench)
    c = model.cfg
    ref = bench.AuthorsINN(c.n_neurons, c.d_model, c.n_layer, c.n_head, 0.0, c.d_state, c.vocab_size,
                           scan=bench.running_state_scan).double()
    state = {"embed.weight": model.embed.weight, "ln_f.weight": model.ln_f.weight, "ln_f.bias": model.ln_f.bias}
    for i, layer in enumerate(model.layers):
        mem, router = layer.memory, layer.router
        state.update({
            f"ln1.{i}.weight": layer.ln_mem.weight, f"ln1.{i}.bias": layer.ln_mem.bias,
            f"ln2.{i}.weight": layer.ln_route.weight, f"ln2.{i}.bias": layer.ln_route.bias,
            f"mamba.{i}.in_proj.weight": mem.in_proj.weight, f"mamba.{i}.conv.weight": mem.conv_weight[:, None, :],
            f"mamba.{i}.conv.bias": mem.conv_bias, f"mamba.{i}.x_proj.weight": mem.x_proj.weight,
            f"mamba.{i}.dt_proj.weight": mem.dt_proj.weight, f"mamba.{i}.dt_proj.bias": mem.dt_proj.bias,
            f"mamba.{i}.A_log": mem.A_log, f"mamba.{i}.D": mem.D, f"mamba.{i}.out_proj.weight": mem.out_proj.weight,
            f"attn.{i}.in_proj_weight": router.qkv.weight, f"attn.{i}.in_proj_bias": router.qkv.bias,
            f"attn.{i}.out_proj.weight": router.out.weight, f"attn.{i}.out_proj.bias": router.out.bias,
        })
    ref.load_state_dict(state)
    return ref.eval()


def test_symmetric_dense_inn_equals_the_authors_model():
    """With identical neurons and dense routing the model is the authors' (re-stated in
    bench/inn.py with nn.MultiheadAttention and a plain loop over time): same logits (float64)."""
    model = small_inn(neuron_identity="none").double()
    with torch.no_grad():
        for layer in model.layers:  # make every term count: non-trivial router biases and norms
            for prm in (layer.router.qkv.bias, layer.router.out.bias, layer.ln_route.bias, layer.ln_mem.bias):
                prm.normal_(0, 0.1)
    ids = torch.randint(0, 27, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), _authors_model_with_our_weights(model)(ids), rtol=1e-9, atol=1e-9)


def test_head_is_the_tied_projection_of_the_mean_over_distinct_neurons():
    model = small_inn(neuron_identity="embedding")
    ids = torch.randint(0, 27, (2, 9))
    with torch.no_grad():
        h = model.neuron_states(ids)  # [B, N, T, D]
        assert (h - h[:, :1]).abs().amax().item() > 1e-3  # the neurons really differ
        torch.testing.assert_close(model(ids), model.ln_f(h.mean(1)) @ model.embed.weight.T, rtol=1e-6, atol=1e-6)


def _loss_and_grads(model, ids, seed=7):
    torch.manual_seed(seed)  # the same dropout draws in both models
    loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("scan_impl,options,rows", [
    ("auto", {}, None),                                                        # the CPU default: the C++ scan
    ("auto", {}, 1),                                                           # its backward in slices
    ("auto", dict(adapter_rank=2, per_neuron_conv=True, routing="topk"), 1),   # every per-neuron option
    ("chunked", {}, None),                                                     # no fused path: torch's checkpoint
])
def test_recomputed_layers_give_the_plain_models_loss_and_gradients(scan_impl, options, rows, monkeypatch):
    """checkpoint_layers (the memory half recomputed by MambaBlock.recomputed: only its input and the
    scan's chunk states kept, the scan output for out_proj's weight gradient taken from the scan's
    backward, `rows` positions per backward slice; the router half keeps its q/k/v projections) equals
    the model without recomputation: float64, dropout on, one parameter frozen."""
    import neurograph.model.mamba as mamba
    from neurograph.kernels.selective_scan import cpp_scan_available

    if rows is not None:
        monkeypatch.setattr(mamba, "RECOMPUTE_ROWS", rows)  # 1: one slice per sequence of the batch
    if scan_impl == "auto" and not cpp_scan_available():
        pytest.fail("the C++ scan does not build here: the recomputed path is untested")
    plain = small_inn(seed=3, dropout=0.1, scan_impl=scan_impl, **options).double().train()
    for p in plain.parameters():  # away from the init (zero adapters, unit D) so every term matters
        p.data.add_(torch.randn_like(p) * 0.05)
    recomputed = small_inn(seed=3, dropout=0.1, scan_impl=scan_impl, checkpoint_layers=True, **options).double().train()
    recomputed.load_state_dict(plain.state_dict())
    for m in (plain, recomputed):
        m.layers[1].ln_mem.weight.requires_grad_(False)
    ids = torch.randint(0, 27, (2, 70), generator=torch.Generator().manual_seed(1))  # 70: a partial scan chunk
    loss, grads = _loss_and_grads(plain, ids)
    loss_r, grads_r = _loss_and_grads(recomputed, ids)
    assert grads_r.keys() == grads.keys() and "layers.1.ln_mem.weight" not in grads
    torch.testing.assert_close(loss_r, loss, rtol=1e-12, atol=0)
    for name, g in grads.items():
        torch.testing.assert_close(grads_r[name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_recomputed_layers_keep_the_routers_qkv_projection():
    """The router half of a recomputed layer saves its q/k/v projection's output (selective
    checkpointing): that matmul runs once per layer and step, not again in backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    m = small_inn(checkpoint_layers=True, dropout=0.1).train()
    qkv = {layer.router.qkv.weight.data_ptr() for layer in m.layers}
    calls = []

    class CountQKV(TorchDispatchMode):  # outermost: sees ops that run, not the ones served from the saved outputs
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.addmm.default and args[2].data_ptr() in qkv:
                calls.append(1)
            return func(*args, **(kwargs or {}))

    with CountQKV():
        _loss_and_grads(m, torch.randint(0, 27, (2, 33)))
    assert len(calls) == len(m.layers)


def test_recomputed_layers_run_the_scan_forward_and_out_proj_once(monkeypatch):
    """The point of MambaBlock.recomputed: a training step with checkpoint_layers runs each layer's
    scan forward and out_proj once (torch's checkpoint of the whole block would run both twice)."""
    import neurograph.model.mamba as mamba
    from neurograph.kernels.selective_scan import cpp_scan_available

    if not cpp_scan_available():
        pytest.fail("the C++ scan does not build here: the recomputed path is untested")
    scans = []
    forward = mamba.cpp_scan_forward
    monkeypatch.setattr(mamba, "cpp_scan_forward", lambda *a, **k: scans.append(1) or forward(*a, **k))
    m = small_inn(checkpoint_layers=True, dropout=0.1).train()
    out_proj = []
    for layer in m.layers:
        layer.memory.out_proj.register_forward_hook(lambda *_: out_proj.append(1))
    _loss_and_grads(m, torch.randint(0, 27, (2, 33)))
    assert len(scans) == len(out_proj) == len(m.layers)
