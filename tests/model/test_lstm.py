"""LSTM baseline (SPEC section 4)."""
from __future__ import annotations

import torch

from neurograph.model import build_model


def test_lstm_parameter_count():
    m = build_model(dict(arch="lstm", vocab_size=27))
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - 4.3e6) / 4.3e6 < 0.05, n


def test_lstm_causal_and_decoding_equals_forward():
    torch.manual_seed(0)
    m = build_model(dict(arch="lstm", vocab_size=27, d_model=24, n_layer=2)).eval()
    x = torch.randint(0, 27, (3, 15))
    y = m(x)
    x2 = x.clone()
    x2[:, 9] = (x2[:, 9] + 3) % 27
    torch.testing.assert_close(m(x2)[:, :9], y[:, :9], rtol=0, atol=0)
    logits, state = m.prefill(x[:, :5])
    outs = [logits]
    for t in range(5, 15):
        lg, state = m.decode_step(x[:, t], state)
        outs.append(lg[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-5, atol=1e-5)
    greedy = m.generate(x[:, :4], 5)
    assert torch.equal(greedy, m.generate(x[:, :4], 5, use_cache=False))
    assert m.generate(x[:, :4], 5, temperature=0.8, top_k=5, do_sample=True).shape == (3, 9)


def test_lstm_forward_equals_the_lstm_equations():
    """Two layers of i, f, g, o gates (PyTorch's weight order) written out, tied head (float64)."""
    torch.manual_seed(0)
    m = build_model(dict(arch="lstm", vocab_size=27, d_model=12, n_layer=2)).double().eval()
    ids = torch.randint(0, 27, (2, 7))
    x = m.embed.weight[ids]  # [B, T, D]
    for layer in range(2):
        w_ih, w_hh = getattr(m.lstm, f"weight_ih_l{layer}"), getattr(m.lstm, f"weight_hh_l{layer}")
        bias = getattr(m.lstm, f"bias_ih_l{layer}") + getattr(m.lstm, f"bias_hh_l{layer}")
        h = c = torch.zeros(2, 12, dtype=torch.float64)
        outs = []
        for t in range(7):
            i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + bias).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        x = torch.stack(outs, 1)
    with torch.no_grad():
        torch.testing.assert_close(m(ids), x @ m.embed.weight.T, rtol=1e-10, atol=1e-10)
