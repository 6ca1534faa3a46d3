"""INL model: 1.1B parameter count, linear-dynamics stability, shared controller, KV cache,
decoding, excitation, drop-in configs and the convergence plot."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from kernels.integrator import integrator_dynamics, is_stable, linear_dynamics_matrix, spectral_radius
from model import build_model, parse_model_config
from model.generation import filter_logits, generate
from model.inl import INLModel, IntegratorController, parameter_breakdown

REPO = Path(__file__).resolve().parents[2]


def tiny(**kw) -> INLModel:
    cfg = dict(arch="inl", vocab_size=97, d_model=64, n_layer=3, n_head=4, max_seq_len=96, num_iterations=5,
               feedforward_dim=96, hierarchical_equilibrium=True, group_size=16)
    cfg.update(kw)
    torch.manual_seed(0)
    return build_model(cfg)


# ------------------------------------------------------------------------ 1.1B configuration
def test_1p1b_config_on_meta_device_parameter_count():
    section = yaml.safe_load((REPO / "configs" / "inl_1.1b.yaml").read_text())["model"]
    cfg = parse_model_config(section)
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.num_iterations) == (50261, 1728, 25, 32, 5)
    assert cfg.embedding_rank == 216 and cfg.feedforward_dim == 6912 and cfg.max_seq_len == 2048
    with torch.device("meta"):
        model = build_model(cfg)
    assert all(p.is_meta for p in model.parameters())
    D, V, F, L, r, R = 1728, 50261, 6912, 25, 216, 64
    expected = {
        "embeddings": V * r + r * D,                                   # 11,229,624 (low-rank)
        "blocks.attn": L * (4 * D * D + 4 * D),                        # 298,771,200
        "blocks.integrator": L * (D + D // 64 + 2 * D),                # 130,275: mu_global, mu_group, excitation amp/freq
        "blocks.ffn": L * (2 * D * F + F + D),                         # 597,412,800
        "shared_controller": (3 * D * R + R) + (R * 4 * D + 4 * D) + 2 * L * 4,  # 781,320
        "norms": L * 3 * 2 * D + 2 * D,                                # 262,656
        "head": D * V,                                                 # 86,851,008 (untied)
    }
    assert parameter_breakdown(model) == expected
    assert sum(p.numel() for p in model.parameters()) == sum(expected.values()) == 995_438_883
    # per-layer controllers would add 24 more copies of the 781,120-parameter controller
    assert model.flops_per_token(2048) > 6 * 995_438_883 * 0.9


def test_tiny_config_parses():
    section = yaml.safe_load((REPO / "configs" / "inl_tiny.yaml").read_text())["model"]
    cfg = parse_model_config({**section, "vocab_size": 65})
    model = build_model(cfg)
    assert model(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 65)


# ------------------------------------------------------------------------ stability theory
def test_linear_dynamics_converge_exactly_where_spectral_radius_below_one():
    """Over a grid of (alpha, p): simulate the card's update with constant coefficients
    (dt = gate = 1, beta = p, v_target = mu = 0; all grid points at once) and compare with the
    closed form M^n [e, w]_0 and with the analytic spectral radius."""
    steps = 400
    alphas = torch.arange(10, dtype=torch.float64) / 10
    ps = torch.linspace(0.02, 4.4, 45, dtype=torch.float64)
    a, p = torch.cartesian_prod(alphas, ps).unbind(1)  # [G]
    z = torch.full_like(a, 1.0)
    v = torch.zeros_like(a)
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    for _ in range(steps):
        z, v = integrator_dynamics(z, v, zero, a, p, one, zero, dt=1.0)
    checked = 0
    for i, (alpha, pp) in enumerate(zip(a.tolist(), p.tolist())):
        m = linear_dynamics_matrix(alpha, pp)
        rho = spectral_radius(alpha, pp)
        assert rho == pytest.approx(torch.linalg.eigvals(m).abs().max().item(), abs=1e-6)
        closed = (torch.linalg.matrix_power(m, steps) @ torch.tensor([1.0, 0.0], dtype=torch.float64))[0].item()
        assert z[i].item() == pytest.approx(closed, rel=1e-6, abs=1e-12)
        assert is_stable(alpha, pp) == (rho < 1.0) == (pp < 2 * (1 + alpha))  # the card's bound is exact here
        if abs(rho - 1.0) < 0.03:
            continue  # too close to the boundary to decide in `steps` iterations
        assert (abs(z[i].item()) < 1e-3) == (rho < 1.0), (alpha, pp, rho)
        checked += 1
    assert checked > 350


# ------------------------------------------------------------------------ shared controller
def test_shared_controller_is_one_module_with_gradients_from_every_layer():
    model = tiny(excitation_sparsity=0.0)
    controllers = [m for m in model.modules() if isinstance(m, IntegratorController)]
    assert len(controllers) == 1 and controllers[0] is model.controller
    assert all(blk.integrator.controller is None for blk in model.blocks)
    assert not any("blocks" in n and "controller" in n for n, _ in model.named_parameters())
    model(torch.randint(0, 97, (2, 16))).sum().backward()
    scale_grad = model.controller.layer_scale.grad  # [L, 4]: row l only receives layer l's gradient
    assert scale_grad.shape == (3, 4) and bool((scale_grad.abs().sum(1) > 0).all())
    # the shared weights receive gradient from each layer separately
    for layer in range(3):
        model.zero_grad()
        x = torch.randn(10, 64, requires_grad=False)
        model.controller(model.controller.context(x), x, x, layer).sum().backward()
        assert model.controller.fc_in.weight.grad.abs().sum() > 0
        assert model.controller.layer_scale.grad[layer].abs().sum() > 0
        assert model.controller.layer_scale.grad[[i for i in range(3) if i != layer]].abs().sum() == 0


def test_controller_split_matches_concatenated_definition_and_init():
    ctrl = IntegratorController(32, 64, n_layers=2)
    h, z, v = torch.randn(3, 7, 32).unbind(0)
    assert torch.allclose(ctrl(ctrl.context(h), z, v, 1), ctrl.reference(h, z, v, 1), atol=1e-6)
    assert torch.allclose(ctrl(ctrl.context(h), z, None, 0), ctrl.reference(h, z, torch.zeros_like(v), 0), atol=1e-6)
    from kernels.integrator import controller_activations
    alpha, beta, gate, vt = controller_activations(ctrl.reference(h, z, v))
    assert alpha.mean().item() == pytest.approx(0.8, abs=0.02)
    assert beta.mean().item() == pytest.approx(0.5, abs=0.02)
    assert gate.mean().item() == pytest.approx(0.5, abs=0.02)
    assert vt.abs().mean().item() < 0.1


def test_per_layer_controllers_when_not_shared():
    model = tiny(shared_controller=False)
    assert model.controller is None
    assert all(isinstance(b.integrator.controller, IntegratorController) for b in model.blocks)
    assert parameter_breakdown(model)["shared_controller"] == 0


# ------------------------------------------------------------------------ KV cache and decoding
@pytest.mark.parametrize("positions", ["sinusoidal", "rope"])
def test_kv_cached_decoding_equals_full_forward(positions):
    model = tiny(positions=positions, lowrank_embeddings=True, tie_embeddings=True, excitation_sparsity=0.1).eval()
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        full = model(ids)
        caches = model.new_caches()
        parts = [model(ids[:, :17], caches)] + [model(ids[:, i : i + 1], caches) for i in range(17, 40)]
    assert caches[0].length == 40
    assert (torch.cat(parts, 1) - full).abs().max().item() < 1e-5


def test_generation_with_cache_equals_without_greedy_and_sampled():
    model = tiny(positions="rope")
    prompt = torch.randint(0, 97, (2, 5))
    a = generate(model, prompt, 30, use_cache=True)
    b = generate(model, prompt, 30, use_cache=False)
    assert a.shape == (2, 35) and torch.equal(a, b) and torch.equal(a[:, :5], prompt)
    kw = dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
    s1 = model.generate(prompt, 30, generator=torch.Generator().manual_seed(3), **kw)
    s2 = model.generate(prompt, 30, use_cache=False, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(s1, s2) and model.training  # generate restores the mode


def test_top_k_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).sum() == 3
    kept = ~torch.isinf(filter_logits(logits, top_p=0.8))
    assert kept.tolist() == [[True, True, True, False, False]]  # 0.5 + 0.2 < 0.8 <= 0.85
    assert (~torch.isinf(filter_logits(logits, top_p=0.5))).sum() == 1


def test_too_long_sequence_is_rejected():
    with pytest.raises(ValueError):
        tiny()(torch.zeros(1, 97, dtype=torch.long))


# ------------------------------------------------------------------------ excitation
def test_excitation_only_in_training_mode():
    model = tiny(excitation_sparsity=0.1, dropout=0.0)
    ids = torch.randint(0, 97, (2, 24))
    model.eval()
    assert model.blocks[0].integrator.excitation_mask(4, torch.zeros(4, 64)) is None
    with torch.no_grad():
        e1, e2 = model(ids), model(ids)
    assert torch.equal(e1, e2)
    model.train()
    mask_like = model.blocks[0].integrator.excitation(0, model.blocks[0].integrator.excitation_mask(2000, torch.zeros(2000, 64)))
    assert mask_like is not None and 0.08 < (mask_like != 0).float().mean().item() < 0.12
    torch.manual_seed(1)
    t1 = model(ids)
    torch.manual_seed(1)
    t2 = model(ids)
    assert torch.equal(t1, t2)  # deterministic under a seed
    assert (t1 - e1).abs().max().item() > 1e-4  # excitation changes the training forward
    plain = tiny(excitation_sparsity=0.0, dropout=0.0)
    with torch.no_grad():
        assert torch.equal(plain.train()(ids), plain.eval()(ids))


# ------------------------------------------------------------------------ misc
def test_options_and_flops():
    for kw in [dict(hierarchical_equilibrium=False), dict(feedforward_dim=0), dict(lowrank_embeddings=True)]:
        model = tiny(**kw)
        out = model(torch.randint(0, 97, (1, 12)))
        assert out.shape == (1, 12, 97) and torch.isfinite(out).all()
    m = tiny(feedforward_dim=0, lowrank_embeddings=False, n_layer=1)
    d, r = 64, 64
    assert m.flops_per_token(10) == 6 * (4 * d * d + 5 * 6 * d * r + d * r + d * 97 + 2 * 10 * d)
    h = tiny(hierarchical_equilibrium=True, group_size=16).blocks[0].integrator
    with torch.no_grad():
        h.mu_group.copy_(torch.arange(4.0))
    assert h.equilibrium().tolist() == [float(i // 16) for i in range(64)]


def test_convergence_plot(tmp_path):
    from model.inl_convergence import plot_convergence, trace_convergence

    model = tiny(feedforward_dim=0)
    ids = torch.randint(0, 97, (20,))
    tr = trace_convergence(model, ids, threshold=0.5, min_iterations=2)
    assert tr.energy.shape == (3, 5) and tr.update.shape == (3, 5) and tr.iterations.shape == (3, 20)
    assert bool(((tr.iterations >= 2) & (tr.iterations <= 5)).all())
    out = plot_convergence(model, ids, tmp_path / "conv.png", threshold=0.5)
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert model.training and not model.blocks[0].integrator.adaptive_stopping  # state restored
