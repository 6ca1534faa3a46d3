"""Model level: INN and INL with their Triton kernels (interpreted on CPU) give the reference
model's logits and parameter gradients over a few optimiser steps."""
from __future__ import annotations

import copy

import pytest
import torch

from neurograph.model.inl import INLConfig, INLModel
from neurograph.model.inn import INN, INNConfig
from tests.kernels.conftest import assert_close


def _same_training(reference: torch.nn.Module, fast: torch.nn.Module, device: str, vocab: int, shape=(2, 9), steps: int = 2):
    """Both models take the same SGD steps; logits and every gradient must agree at each step."""
    g = torch.Generator().manual_seed(0)
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (reference, fast)]
    for step in range(steps):
        ids = torch.randint(0, vocab, shape, generator=g).to(device)
        outs = []
        for model, opt in zip((reference, fast), opts):
            torch.manual_seed(step)  # the same random draws (excitation masks) in both models
            opt.zero_grad()
            logits = model(ids)
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
            outs.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
            opt.step()
        assert_close(outs[1][0], outs[0][0], name=f"logits, step {step}")
        for name, grad in outs[0][1].items():
            assert_close(outs[1][1][name], grad, name=f"grad {name}, step {step}")


def test_inl_triton_matches_reference(triton_device):
    """Training with excitation (the same random masks: both models draw them in the same order)."""
    cfg = dict(vocab_size=50, d_model=48, n_layer=2, n_head=4, num_iterations=3, controller_rank=16, max_seq_len=16,
               excitation_sparsity=0.3)
    torch.manual_seed(0)
    reference = INLModel(INLConfig(**cfg, integrator_impl="reference")).to(triton_device)
    fast = INLModel(INLConfig(**cfg, integrator_impl="triton")).to(triton_device)
    fast.load_state_dict(reference.state_dict())
    _same_training(reference, fast, triton_device, 50)


def test_inl_triton_adaptive_stopping_matches_reference(triton_device):
    """Eval with adaptive stopping: same logits and the same iterations per token, with a threshold
    (midway between the two middle updates before stopping may start) that stops half the tokens early."""
    cfg = dict(vocab_size=50, d_model=48, n_layer=1, n_head=4, num_iterations=6, controller_rank=16, max_seq_len=16,
               min_iterations=2)
    torch.manual_seed(0)
    reference = INLModel(INLConfig(**cfg, integrator_impl="reference")).to(triton_device).eval()
    with torch.no_grad():
        reference.controller.fc_out.weight.normal_(std=0.3)  # tokens settle at different speeds
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0)).to(triton_device)
    branch = reference.integrators()[0]
    branch.trace = []
    with torch.no_grad():
        reference(ids)
    updates = branch.trace[cfg["min_iterations"] - 1]["update"].sort().values
    threshold = updates[len(updates) // 2 - 1 : len(updates) // 2 + 1].mean().item()  # between two tokens' updates
    branch.trace = None
    reference.set_adaptive_stopping(True, threshold)
    fast = copy.deepcopy(reference)
    for it in fast.integrators():
        it.impl = "triton"
    with torch.no_grad():
        assert_close(fast(ids), reference(ids))
    iterations = reference.iterations_used()
    assert len(iterations.unique()) > 1
    assert torch.equal(fast.iterations_used().cpu(), iterations.cpu())


@pytest.mark.parametrize("routing", ["dense", "topk"])
def test_inn_triton_matches_reference(routing, triton_device):
    cfg = dict(vocab_size=50, d_model=16, n_neurons=5, n_layer=1, n_head=2, d_state=4, dropout=0.0, routing=routing,
               topk=3, topk_sketch_dim=0)
    torch.manual_seed(0)
    cfg["per_neuron_conv"] = routing == "dense"  # the Triton conv with one kernel per neuron, and shared
    reference = INN(INNConfig(**cfg, scan_impl="sequential", router_impl="reference")).to(triton_device)
    fast = INN(INNConfig(**cfg, scan_impl="triton", router_impl="triton", conv_impl="triton")).to(triton_device)
    fast.load_state_dict(reference.state_dict())
    _same_training(reference, fast, triton_device, 50, shape=(1, 6))
