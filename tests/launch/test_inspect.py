"""`neurograph inspect`: neuron statistics and routing graphs of an INN (against its untrained
initialisation), iterations and controller of an INL (launch/experiments/inspection.py)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from neurograph.kernels.integrator import ALPHA_INIT, BETA_INIT, GATE_INIT
from neurograph.launch.cli import main
from neurograph.launch.experiments.inspection import (held_out, inn_statistics, inspect_inl, inspect_inn,
                                                     routing_weights, summary_lines)
from neurograph.launch.inference import load_trained_model
from neurograph.model import build_model, parse_model_config
from neurograph.model.neuron_router import build_router
from tests.trainer.runs import TINY_TRANSFORMER, train

INN = {"arch": "inn", "d_model": 32, "n_neurons": 8, "n_layer": 2, "n_head": 2, "d_state": 8, "dropout": 0.0}
INL = {"arch": "inl", "d_model": 32, "n_layer": 2, "n_head": 4, "num_iterations": 6, "controller_rank": 16,
       "max_seq_len": 64, "min_iterations": 2}
PNG = b"\x89PNG\r\n\x1a\n"


def matrix(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def tiny(spec: dict, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(parse_model_config({**spec, "vocab_size": 50, **options})).eval()


@pytest.mark.parametrize("kind,groups", [("dense", 1), ("topk", 1), ("static", 1), ("hierarchical", 1),
                                         ("hierarchical", 2)])
def test_routing_weights_reproduce_the_router(kind, groups):
    """The weights recomputed from a router's input mix its values into exactly its output."""
    torch.manual_seed(0)
    n, d = 8, 32
    router = build_router(kind, d, 4, n, topk=3, sketch_dim=8, group_size=n // groups).eval()
    m = torch.randn(5, n, d)  # [M, N, D]
    w = routing_weights(router, m)  # [M, H, N, N]
    assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-6)
    with torch.no_grad():
        if kind == "static":
            mixed = router.out(w[:, 0] @ router.value(m))
        else:
            attn = router.local if kind == "hierarchical" else router
            v = attn.heads(m)[2].transpose(1, 2)  # [M, H, N, hd]
            mixed = attn.out((w @ v).transpose(1, 2).reshape(m.shape))
            if groups > 1:  # plus the group summaries' attention, broadcast to each group
                mixed += router.upper(m.view(5, groups, n // groups, d).mean(2)).repeat_interleave(n // groups, 1)
        assert torch.allclose(mixed, router(m), atol=1e-5)
    if kind == "topk":
        assert ((w > 0).sum(-1) == 3).all()
    if groups > 1:
        assert (w[..., :4, 4:] == 0).all() and (w[..., 4:, :4] == 0).all()  # block diagonal


@pytest.mark.parametrize("routing", ["dense", "none", "static", "topk", "hierarchical"])
def test_distinctness_is_zero_for_the_symmetric_variant_and_positive_with_identity_vectors(routing):
    ids = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(0))
    options = dict(routing=routing, topk=3, group_size=4)
    model = tiny(INN, neuron_identity="none", **options)
    symmetric = inn_statistics(model, ids)
    identity = inn_statistics(tiny(INN, neuron_identity="embedding", **options), ids)
    for layer in symmetric:
        assert abs(layer["distinctness"]) < 1e-9
        assert torch.allclose(matrix(layer["similarity_matrix"]), torch.ones((), dtype=torch.float64), atol=1e-9)
        assert max(layer["neuron_abs_mean"]) - min(layer["neuron_abs_mean"]) < 1e-6  # all neurons alike
    for layer in identity:
        assert layer["distinctness"] > 1e-3
        assert layer["distinctness"] == pytest.approx(1 - layer["similarity"])
        assert max(layer["neuron_abs_mean"]) - min(layer["neuron_abs_mean"]) > 1e-4
    assert (symmetric[0]["attention"] is None) == (routing == "none")
    n = INN["n_neurons"]
    if routing == "dense":  # identical neurons attend uniformly
        assert torch.allclose(matrix(symmetric[1]["attention"]), torch.full((n, n), 1 / n, dtype=torch.float64))
        assert symmetric[1]["entropy"] == pytest.approx([math.log(n)] * n)
    if routing == "static":  # the fixed mixing matrix, whatever the states
        mixing = model.layers[1].router.mixing.double()
        assert torch.allclose(matrix(identity[1]["attention"]), mixing)
        assert identity[1]["in_degree"] == pytest.approx(mixing.sum(0).tolist())
        assert identity[1]["entropy"] == pytest.approx((-torch.special.xlogy(mixing, mixing).sum(1)).tolist())


def test_statistics_do_not_depend_on_how_the_text_is_split(monkeypatch):
    from neurograph.launch.experiments import inspection

    ids = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(0))
    model = tiny(INN, routing="topk", topk=3)
    whole = inn_statistics(model, ids)
    monkeypatch.setattr(inspection, "BATCH", 2)
    monkeypatch.setattr(inspection, "ROUTE_CHUNK", 5 * INN["n_neurons"] ** 2)  # 5 tokens' weights at a time
    split = inn_statistics(model, ids)
    for a, b in zip(whole, split):
        for key in ("distinctness", "neuron_std", "in_degree", "entropy"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key


def test_inn_without_routing_draws_no_graph(tmp_path):
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    summary = inspect_inn(tiny(INN, routing="none", seed=1), tiny(INN, routing="none"), ids, tmp_path)
    assert summary["figures"] == ["inn_neurons.png", "inn_similarity.png"]
    assert sorted(path.name for path in tmp_path.iterdir()) == summary["figures"]
    assert summary["routing_shown"].startswith("no graph")
    assert summary["headline"][0]["trained"] == {"distinctness": summary["layers"]["trained"][0]["distinctness"],
                                                 "hub": None, "max_in_degree": None, "mean_entropy": None}


@pytest.mark.slow
def test_inspect_a_trained_inn(tmp_path, char_data, capsys):
    run = tmp_path / "inn"
    train(tmp_path, char_data, "inn", "trainer.max_steps=6", "tracking.enabled=false", model=INN)
    out = tmp_path / "inspection"
    assert main(["inspect", "--run", str(run), "--out", str(out), "--sequences", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["figures"] == ["inn_neurons.png", "inn_routing.png", "inn_similarity.png"]
    for name in summary["figures"]:
        assert (out / name).read_bytes()[:8] == PNG and (out / name).stat().st_size > 10_000
    assert summary["checkpoint"] == "step_00000006" and summary["tokens"] == 3 * 64
    printed = capsys.readouterr().out
    assert printed.count("distinctness") == INN["n_layer"]

    n = INN["n_neurons"]
    trained, untrained = summary["layers"]["trained"], summary["layers"]["untrained"]
    for layer in trained + untrained:
        attention = matrix(layer["attention"])  # [N, N]
        assert torch.allclose(attention.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-6)
        assert layer["in_degree"] == pytest.approx(attention.sum(0).tolist())  # attention received
        assert all(0 < e <= math.log(n) + 1e-9 for e in layer["entropy"])
        assert layer["distinctness"] > 0  # identity vectors
    # the trained numbers are the checkpoint's on the held-out text; the baseline is another model
    model, _, cfg = load_trained_model(run)
    again = inn_statistics(model, held_out(cfg.data.path, 3))
    assert [layer["distinctness"] for layer in trained] == pytest.approx([layer["distinctness"] for layer in again])
    assert not torch.allclose(matrix(trained[0]["attention"]), matrix(untrained[0]["attention"]))
    assert summary["headline"][1]["trained"]["hub"] == max(range(n), key=trained[1]["in_degree"].__getitem__)


def test_inl_iterations_and_controller(tmp_path):
    ids = torch.randint(0, 50, (6, 32), generator=torch.Generator().manual_seed(0))
    model = tiny(INL, stop_threshold=0.6)
    for weight in (model.controller.fc_in.weight, model.controller.fc_out.weight):
        torch.nn.init.normal_(weight, std=0.3)  # tokens that settle at different speeds
    reference = copy.deepcopy(model)
    summary = inspect_inl(model, ids, tmp_path)
    for name in summary["figures"]:
        assert (tmp_path / name).read_bytes()[:8] == PNG

    reference.set_adaptive_stopping(True)
    with torch.no_grad():
        reference(ids)
    expected = reference.iterations_used()  # [L, S, T]
    assert summary["iterations_per_token"] == expected.tolist()
    assert len(expected.unique()) > 1  # some tokens stop early, some do not
    assert summary["mean_iterations"] == pytest.approx(expected.float().mean().item())
    for layer, used in zip(summary["layers"], expected):
        assert layer["iterations_histogram"] == torch.bincount(used.flatten(), minlength=7)[1:].tolist()
        assert layer["controller_samples"] == INL["d_model"] * used.sum().item()  # one call per iteration run
        assert 0 < layer["stable_fraction"] <= 1
    lines = summary_lines({"arch": "inl", "checkpoint": "step_00000001", "tokens": ids.numel(), **summary}, tmp_path)
    assert len(lines) == 1 + INL["n_layer"] and "inl_alpha_p.png" in lines[0]
    assert lines[2].startswith(f"  layer 1: {summary['layers'][1]['mean_iterations']:.2f} of 6 iterations per token")

    fresh = tiny(INL)
    for layer in inspect_inl(fresh, ids, tmp_path)["layers"]:  # the controller's operating point at initialisation
        assert layer["alpha_mean"] == pytest.approx(ALPHA_INIT, abs=0.01)
        assert layer["p_mean"] == pytest.approx(fresh.cfg.dt * GATE_INIT * BETA_INIT, rel=0.05)
        assert layer["stable_fraction"] == 1.0


def test_other_families_and_bad_options(tmp_path, char_data, capsys):
    import yaml

    run = tmp_path / "transformer"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": TINY_TRANSFORMER,
                                                     "data": {"path": str(char_data), "seq_len": 64}}))
    assert main(["inspect", "--run", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == "error: inspect supports inn and inl, the run has model.arch=transformer\n"
    assert main(["inspect", "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "not a training run directory" in capsys.readouterr().err
    assert main(["inspect", "--run", str(run), "--out", str(tmp_path / "out"), "--sequences", "0"]) == 2
    assert "--sequences must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
