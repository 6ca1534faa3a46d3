"""INL model: 1.1B parameter count, linear-dynamics stability, the card's integrator, hierarchical
equilibrium, shared controller, KV cache, decoding, excitation, configs and convergence diagnostics."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from neurograph.kernels.integrator import integrator_dynamics, is_stable, linear_dynamics_matrix, spectral_radius
from neurograph.model import build_model, parse_model_config
from neurograph.model.generation import filter_logits, generate
from neurograph.model.inl import INLConfig, INLModel, IntegratorBranch, IntegratorController, parameters_per_component

from .inl_reference import card_integrator

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
        "blocks.integrator": L * (1 + (D // 64 - 1) + 2 * D),          # 87,075: mu_global, mu_group, excitation amp/freq
        "blocks.ffn": L * (2 * D * F + F + D),                         # 597,412,800
        "shared_controller": (3 * D * R + R) + (R * 4 * D + 4 * D) + 2 * L * 4,  # 781,320
        "norms": L * 3 * 2 * D + 2 * D,                                # 262,656
        "head": D * V,                                                 # 86,851,008 (untied)
    }
    assert parameters_per_component(model) == expected
    assert sum(p.numel() for p in model.parameters()) == sum(expected.values()) == 995_395_683
    # per-layer controllers would add 24 more copies of the 781,120-parameter controller
    assert model.flops_per_token(2048) > 6 * 995_395_683 * 0.9


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
        m = torch.tensor([[1.0 - pp, alpha], [-pp, alpha]], dtype=torch.float64)  # e' = e + w', w' = alpha w - p e
        assert torch.equal(linear_dynamics_matrix(alpha, pp), m)
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


def test_stability_region_is_exactly_p_below_two_one_plus_alpha():
    """Both sides of the analytic bound p < 2(1 + alpha), 0.2 % away: just inside, the simulated
    error decays and rho < 1; just outside, it grows and rho > 1 (an eigenvalue crosses -1 there)."""
    alphas = torch.tensor([0.0, 0.3, 0.5, 0.8, 0.95], dtype=torch.float64).repeat(2)
    inside = torch.arange(10) < 5
    p = 2 * (1 + alphas) * torch.where(inside, 1 - 2e-3, 1 + 2e-3)
    e, v = torch.ones_like(p), torch.zeros_like(p)
    zero, one = torch.zeros_like(p), torch.ones_like(p)
    for _ in range(4000):
        e, v = integrator_dynamics(e, v, zero, alphas, p, one, zero, dt=1.0)
    assert ((e.abs() < 1e-3) == inside).all(), e
    for alpha, pp, stable in zip(alphas.tolist(), p.tolist(), inside.tolist()):
        eig = torch.linalg.eigvals(torch.tensor([[1.0 - pp, alpha], [-pp, alpha]], dtype=torch.float64)).abs().max()
        assert (eig.item() < 1) == stable == is_stable(alpha, pp), (alpha, pp)
        assert spectral_radius(alpha, pp) == pytest.approx(eig.item(), abs=1e-9)
    # the INL card lists (alpha 0.5, p 2.5) as unstable; it converges, with rho = sqrt(0.5)
    assert spectral_radius(0.5, 2.5) == pytest.approx(0.5 ** 0.5) and is_stable(0.5, 2.5)


# ------------------------------------------------------------------------ the card's integrator
@pytest.mark.parametrize("shared", [True, False])
def test_model_integrator_equals_card_equations(shared):
    """Every layer's branch (hierarchical mu, eval-mode expected excitation) against the card's
    update re-stated in tests/model/inl_reference.py, with non-trivial parameters."""
    model = tiny(shared_controller=shared, excitation_sparsity=0.3).double().eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if "integrator" in name or "controller" in name:
                prm.add_(0.3 * torch.randn_like(prm))
    z0, h = torch.randn(2, 2, 7, 64, dtype=torch.float64).unbind(0)
    for layer, blk in enumerate(model.blocks):
        it = blk.integrator
        ctrl = it.controller if it.controller is not None else model.controller
        offsets = torch.cat([it.mu_group, -it.mu_group.sum(0, keepdim=True)])
        mu = (it.mu_global + offsets[:, None]).expand(4, 16).reshape(64)  # 4 groups of 16 channels
        amp, freq = it.excitation_amplitude, it.excitation_frequency
        ref = card_integrator(ctrl, mu, z0.reshape(14, 64), h.reshape(14, 64), 5, 0.1, layer,
                              lambda k: 0.3 * amp * torch.sin(freq * (k + 1)))
        with torch.no_grad():
            torch.testing.assert_close(it(z0, h, model.controller), ref.view(2, 7, 64), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------ hierarchical equilibrium
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_hierarchical_equilibrium_has_no_redundant_parameters(groups):
    """mu is one global value plus zero-sum group offsets: the Jacobian of mu [D] with respect to
    all its parameters has full column rank (= #parameters = #groups); mu is constant within groups
    and its mean is the global value; one group is a single global value."""
    it = IntegratorBranch(INLConfig(d_model=64, n_head=4, hierarchical_equilibrium=True, group_size=64 // groups),
                          0, own_controller=True)
    params = [p for n, p in it.named_parameters() if n.startswith("mu_")]
    assert sum(p.numel() for p in params) == groups
    torch.manual_seed(0)
    with torch.no_grad():
        for prm in params:
            prm.copy_(torch.randn_like(prm))
    mu = it.equilibrium()  # [D]
    jac = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(mu[i], params, retain_graph=True)])
                       for i in range(64)])  # [D, #parameters]
    assert jac.shape == (64, groups) and torch.linalg.matrix_rank(jac).item() == groups
    mu = mu.detach()
    assert torch.equal(mu.view(groups, -1), mu.view(groups, -1)[:, :1].expand(groups, 64 // groups))
    assert mu.mean().item() == pytest.approx(it.mu_global.item(), abs=1e-6)
    if groups == 1:
        assert torch.equal(mu, it.mu_global.detach().expand(64))


def test_old_hierarchical_checkpoint_is_converted_or_refused():
    """Old shapes (mu_global [D] + repeat(mu_group [G])) load when their mu is constant within groups
    (same mu afterwards) and are refused, naming the parameter, when it is not."""
    cfg = INLConfig(d_model=64, n_head=4, hierarchical_equilibrium=True, group_size=16)
    it = IntegratorBranch(cfg, 0, own_controller=True)
    old = {k: v.clone() for k, v in it.state_dict().items()}
    old["mu_global"] = torch.full((64,), 0.25)
    old["mu_group"] = torch.tensor([1.0, -2.0, 0.5, 3.0])
    it.load_state_dict(old)
    assert it.mu_global.shape == (1,) and it.mu_group.shape == (3,)
    torch.testing.assert_close(it.equilibrium(), 0.25 + torch.tensor([1.0, -2.0, 0.5, 3.0]).repeat_interleave(16))
    old["mu_global"] = torch.linspace(0, 1, 64)  # per-channel values: not expressible
    with pytest.raises(ValueError, match="mu_global.*hierarchical_equilibrium: false"):
        IntegratorBranch(cfg, 0, own_controller=True).load_state_dict(old)


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
    from neurograph.kernels.integrator import controller_activations
    alpha, beta, gate, vt = controller_activations(ctrl.reference(h, z, v))
    assert alpha.mean().item() == pytest.approx(0.8, abs=0.02)
    assert beta.mean().item() == pytest.approx(0.5, abs=0.02)
    assert gate.mean().item() == pytest.approx(0.5, abs=0.02)
    assert vt.abs().mean().item() < 0.1


def test_per_layer_controllers_when_not_shared():
    model = tiny(shared_controller=False)
    assert model.controller is None
    assert all(isinstance(b.integrator.controller, IntegratorController) for b in model.blocks)
    assert parameters_per_component(model)["shared_controller"] == 0


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
def test_excitation_random_in_training_deterministic_in_eval():
    model = tiny(excitation_sparsity=0.1, dropout=0.0)
    ids = torch.randint(0, 97, (2, 24))
    it = model.blocks[0].integrator
    model.eval()
    assert it.excitation_mask(4, torch.zeros(4, 64)) is None
    with torch.no_grad():
        e1, e2 = model(ids), model(ids)
    assert torch.equal(e1, e2)
    model.train()
    mask = it.excitation_mask(2000, torch.zeros(2000, 64))
    assert 0.08 < mask.mean().item() < 0.12 and set(mask.unique().tolist()) <= {0.0, 1.0}
    torch.manual_seed(1)
    t1 = model(ids)
    torch.manual_seed(1)
    t2 = model(ids)
    assert torch.equal(t1, t2)  # deterministic under a seed
    assert (t1 - e1).abs().max().item() > 1e-4  # the random excitation changes the training forward
    plain = tiny(excitation_sparsity=0.0, dropout=0.0)
    with torch.no_grad():
        assert torch.equal(plain.train()(ids), plain.eval()(ids))


def test_eval_excitation_is_the_expectation_of_training_excitation():
    """Exact enumeration of all 2^(N D) masks (N = 2 tokens, D = 4 channels, p = 0.3, one
    iteration, dropout off): eval output == sum over masks of P(mask) x train output, and the
    excitation term is really there (it differs from the same branch without excitation)."""
    cfg = INLConfig(d_model=4, n_head=1, num_iterations=1, controller_rank=8, excitation_sparsity=0.3)
    torch.manual_seed(0)
    it = IntegratorBranch(cfg, 0, own_controller=True).double()
    with torch.no_grad():
        it.excitation_amplitude.copy_(torch.tensor([0.5, -1.0, 2.0, 0.7]))
        for prm in it.controller.parameters():
            prm.add_(0.5 * torch.randn_like(prm))
    z0, h = torch.randn(2, 1, 2, 4, dtype=torch.float64).unbind(0)
    expected = torch.zeros_like(z0)
    for bits in range(2 ** 8):
        mask = torch.tensor([(bits >> i) & 1 for i in range(8)], dtype=torch.float64).view(2, 4)
        prob = (0.3 ** mask * 0.7 ** (1 - mask)).prod()
        it.excitation_mask = lambda n, like, m=mask: m  # noqa: E731
        expected += prob * it.train()(z0, h)
    del it.excitation_mask
    with torch.no_grad():
        out = it.eval()(z0, h)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        it.excitation_sparsity = 0.0
        assert (it(z0, h) - out).abs().max().item() > 1e-3


# ------------------------------------------------------------------------ convergence diagnostics
def test_energy_goes_to_zero_at_the_true_fixed_point():
    """Constant coefficients (controller weights zero, v_target = 0.7 != 0, mu != 0): the recorded
    energy of the first iteration is ||z_1 - z*||^2 + ||v_1||^2 with z* = mu + (1 - alpha) v_target / beta,
    and it falls to ~0 as the integrator converges (||z - mu||^2 would stay at ||z* - mu||^2 > 0)."""
    cfg = INLConfig(d_model=8, n_head=1, num_iterations=300, hierarchical_equilibrium=True, group_size=4)
    it = IntegratorBranch(cfg, 0, own_controller=True).double().eval()
    with torch.no_grad():
        it.controller.fc_in.weight.zero_()
        it.controller.fc_out.weight.zero_()
        it.controller.fc_out.bias[24:] = 0.7  # v_target
        it.mu_global.fill_(0.4)
        it.mu_group.fill_(-1.0)
    torch.manual_seed(0)
    z0 = torch.randn(1, 3, 8, dtype=torch.float64)
    alpha, beta, gate, vt, dt = 0.8, 0.5, 0.5, 0.7, 0.1
    mu = torch.tensor([-0.6] * 4 + [1.4] * 4, dtype=torch.float64)
    z_star = mu + (1 - alpha) * vt / beta
    v1 = (1 - alpha) * vt - beta * (z0 - mu)
    z1 = z0 + dt * gate * v1
    it.trace = []
    with torch.no_grad():
        zk = it(z0, z0)
    energy = torch.stack([r["energy"] for r in it.trace])  # [K, N]
    torch.testing.assert_close(energy[0].double(), ((z1 - z_star).square().sum(-1) + v1.square().sum(-1))[0],
                               rtol=1e-6, atol=1e-9)
    assert energy[-1].max().item() < 1e-10 * energy[0].min().item()
    torch.testing.assert_close(zk[0], z_star.expand(3, 8), rtol=1e-6, atol=1e-6)
    assert (z_star - mu).square().sum().item() > 0.5


# ------------------------------------------------------------------------ misc
def test_options_and_flops():
    for kw in [dict(hierarchical_equilibrium=False), dict(feedforward_dim=0), dict(lowrank_embeddings=True)]:
        model = tiny(**kw)
        out = model(torch.randint(0, 97, (1, 12)))
        assert out.shape == (1, 12, 97) and torch.isfinite(out).all()
    m = tiny(feedforward_dim=0, lowrank_embeddings=False, n_layer=1)
    d, r = 64, 64
    assert m.flops_per_token(10) == 6 * (4 * d * d + 5 * 6 * d * r + d * 97 + 2 * 10 * d)


def test_convergence_plot(tmp_path):
    from neurograph.model.inl_convergence import plot_convergence, trace_convergence

    model = tiny(feedforward_dim=0)
    ids = torch.randint(0, 97, (20,))
    tr = trace_convergence(model, ids, threshold=0.5, min_iterations=2)
    assert tr.energy.shape == (3, 5) and tr.update.shape == (3, 5) and tr.iterations.shape == (3, 20)
    assert bool(((tr.iterations >= 2) & (tr.iterations <= 5)).all())
    out = plot_convergence(model, ids, tmp_path / "conv.png", threshold=0.5)
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert model.training and not model.blocks[0].integrator.adaptive_stopping  # state restored
