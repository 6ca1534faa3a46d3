"""Drop-in FFN replacement inside Hugging Face GPT-2 / Llama decoders (built from configs)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neurograph.model import build_model
from neurograph.model.hf_integrator import INLFeedForward, replace_ffn_with_inl
from neurograph.model.inl import IntegratorController


@pytest.mark.parametrize("base", ["gpt2", "llama"])
def test_hf_inl_arch_trains_with_one_shared_controller(base):
    torch.manual_seed(0)
    model = build_model(dict(arch="hf_inl", base=base, vocab_size=50, d_model=32, n_layer=3, n_head=4,
                             max_seq_len=32, num_iterations=3, hierarchical_equilibrium=True, group_size=8))
    mlps = [m for m in model.modules() if type(m).__name__ in ("GPT2MLP", "LlamaMLP")]
    assert not mlps
    assert len([m for m in model.modules() if isinstance(m, INLFeedForward)]) == 3
    assert len([m for m in model.modules() if isinstance(m, IntegratorController)]) == 1
    assert sum("controller" in k for k in model.state_dict()) == 6  # fc_in/fc_out w+b, scale, bias — once
    x = torch.randint(0, 50, (4, 16))
    assert model(x).shape == (4, 16, 50)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        if not losses:
            assert bool((model.controller.layer_scale.grad.abs().sum(1) > 0).all())  # every layer reaches it
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    assert model.flops_per_token(16) > 0 and model.context_length == 32


def test_replace_ffn_in_an_existing_model_keeps_attention():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=2, n_positions=16,
                                    bos_token_id=39, eos_token_id=39))
    attn_before = hf.transformer.h[0].attn.c_attn.weight.clone()
    ctrl = replace_ffn_with_inl(hf, num_iterations=4)
    assert hf.inl_controller is ctrl and hf.transformer.h[1].mlp._controller[0] is ctrl
    assert torch.equal(hf.transformer.h[0].attn.c_attn.weight, attn_before)
    out = hf(input_ids=torch.randint(0, 40, (2, 10))).logits
    assert out.shape == (2, 10, 40) and torch.isfinite(out).all()


def test_inl_feedforward_equals_card_equations():
    """The HF drop-in (context h = u) against the card's integrator re-stated in the tests."""
    from .inl_reference import card_integrator

    torch.manual_seed(0)
    model = build_model(dict(arch="hf_inl", base="llama", vocab_size=50, d_model=32, n_layer=2, n_head=4,
                             max_seq_len=32, num_iterations=3, hierarchical_equilibrium=True, group_size=8)).double()
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if "integrator" in name or "controller" in name:
                prm.add_(0.3 * torch.randn_like(prm))
    ffns = [m for m in model.modules() if isinstance(m, INLFeedForward)]
    u = torch.randn(2, 5, 32, dtype=torch.float64)
    for layer, ffn in enumerate(ffns):
        it = ffn.integrator
        offsets = torch.cat([it.mu_group, -it.mu_group.sum(0, keepdim=True)])
        mu = (it.mu_global + offsets[:, None]).expand(4, 8).reshape(32)
        ref = card_integrator(model.controller, mu, u.reshape(10, 32), u.reshape(10, 32), 3, 0.1, layer)
        with torch.no_grad():
            torch.testing.assert_close(ffn(u), ref.view(2, 5, 32), rtol=1e-9, atol=1e-9)
