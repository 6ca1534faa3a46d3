"""FLOPs per token of every family against torch's FLOP counter, and MFU/HFU accounting."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from neurograph.model import build_model
from neurograph.model.mamba import MambaBlock
from neurograph.trainer.config import TrainerConfig
from neurograph.trainer.mfu import Utilization, table_peak_tflops

V, B, T = 64, 2, 32
ATTENTION = {"d_model": 64, "n_layer": 2, "n_head": 4, "max_seq_len": T}
INN = {"arch": "inn", "d_model": 32, "n_layer": 1, "n_head": 4, "dropout": 0.0, "scan_impl": "sequential"}
CONFIGS = {
    "transformer": {"arch": "transformer", "d_ff": 128, **ATTENTION},
    "inn_dense": {**INN, "n_neurons": 4, "n_layer": 2},
    "inn_hierarchical": {**INN, "n_neurons": 16, "routing": "hierarchical", "group_size": 4},
    "inn_topk": {**INN, "n_neurons": 16, "routing": "topk", "topk": 4},
    "inn_static_adapter": {**INN, "n_neurons": 4, "routing": "static", "adapter_rank": 4},
    "inl_ffn": {"arch": "inl", "num_iterations": 3, "feedforward_dim": 128, "controller_rank": 16, **ATTENTION},
    "inl_lowrank_tied": {"arch": "inl", "num_iterations": 3, "controller_rank": 16, "lowrank_embeddings": True,
                         "tie_embeddings": True, **ATTENTION},
    "hf_inl_gpt2": {"arch": "hf_inl", "num_iterations": 3, "controller_rank": 16, **ATTENTION},
    "hf_inl_llama": {"arch": "hf_inl", "base": "llama", "num_iterations": 3, "controller_rank": 16, **ATTENTION},
    "lstm": {"arch": "lstm", "d_model": 32, "n_layer": 2},
    "mamba_stack": {"arch": "mamba_stack", "d_model": 32, "n_layer": 2, "scan_impl": "sequential"},
}
# every matmul of these is in the formula (the others approximate routing or LSTM biases)
EXACT = {"transformer", "inn_dense", "inl_ffn", "inl_lowrank_tied", "hf_inl_gpt2", "hf_inl_llama", "mamba_stack"}


def elementwise_flops_per_token(model: torch.nn.Module, sequences_per_token: int) -> float:
    """Training FLOPs per token that `flops_per_token` includes but the counter cannot see: per Mamba
    block and sequence, the depthwise conv (2 d_inner K), the scan's discretisation and state update
    (7 d_inner S; its contraction with C, 2 d_inner S, is a bmm the counter sees) and the skip and
    gate (2 d_inner), forward x 3. Hierarchical routing's mean and broadcast (2 D per neuron) are
    left in: within the tolerance."""
    blocks = [m for m in model.modules() if isinstance(m, MambaBlock)]
    per_block = [2 * b.d_inner * b.d_conv + 7 * b.d_inner * b.d_state + 2 * b.d_inner for b in blocks]
    return 3 * sequences_per_token * sum(per_block)


@pytest.mark.parametrize("name", CONFIGS)
def test_flops_per_token_matches_flop_counter(name):
    cfg = {"vocab_size": V, **CONFIGS[name]}
    torch.manual_seed(0)
    model = build_model(cfg)
    ids = torch.randint(0, V, (B, T))
    # the math attention path and plain LSTM cells run as matmuls the counter knows
    with sdpa_kernel(SDPBackend.MATH), torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as fc:
        model(ids).float().sum().backward()
    counted = fc.get_total_flops() / (B * T)
    matmul_class = model.flops_per_token(T) - elementwise_flops_per_token(model, cfg.get("n_neurons", 1))
    assert matmul_class == pytest.approx(counted, rel=1e-9 if name in EXACT else 0.05)


def test_peak_table_detects_device_names():
    assert table_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert table_peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert table_peak_tflops("NVIDIA H200", "bf16") == 989.0
    assert table_peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert table_peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5
    assert table_peak_tflops("NVIDIA L40S", "bf16") == 362.0
    assert table_peak_tflops("NVIDIA L4", "bf16") == 121.0
    assert table_peak_tflops("Tesla T4", "bf16") is None


def test_utilization_closed_form():
    # 8 devices of 100 TFLOP/s doing 200 TFLOP/s of model work: MFU 0.25; all blocks recomputed: HFU 0.25 x 4/3
    out = Utilization(100.0, 8, recompute=1.0).metrics(200e12)
    assert out == pytest.approx({"train/mfu": 0.25, "train/hfu": 0.25 * 4 / 3})
    assert Utilization(100.0, 8).metrics(200e12)["train/hfu"] == pytest.approx(0.25)


def test_no_mfu_on_cpu_without_a_configured_peak(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Utilization.for_run(TrainerConfig(), world_size=2, recompute=0.0) is None
    given = Utilization.for_run(TrainerConfig(peak_tflops=50.0), world_size=2, recompute=0.0)
    assert given.metrics(25e12) == pytest.approx({"train/mfu": 0.25, "train/hfu": 0.25})
