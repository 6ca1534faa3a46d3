"""`neurograph plan`: model states against DeepSpeed's estimators, activations against the measured
peak memory of real training steps, the time and checkpoint arithmetic, the roofline's predicted MFU (closed
form, the 1.1B INL's, the measured H200 run), the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from neurograph.launch.cli import main
from neurograph.launch.planner import GIB, activation_bytes_per_sequence, make_plan
from neurograph.launch.roofline import INTEGRATOR_VARIANTS, micro_step_costs, predict
from neurograph.model import build_model, parse_model_config
from neurograph.trainer.config import DeepSpeedConfig, TrainerConfig

from ..conftest import REPO

V = 64
SMALL = {
    "transformer": ({"arch": "transformer", "d_model": 64, "n_layer": 4, "n_head": 4, "d_ff": 256, "max_seq_len": 128,
                     "dropout": 0.0}, 16),
    "inl": ({"arch": "inl", "d_model": 64, "n_layer": 4, "n_head": 4, "num_iterations": 5, "max_seq_len": 128,
             "controller_rank": 32, "dropout": 0.0, "excitation_sparsity": 0.1}, 16),
    "inn": ({"arch": "inn", "d_model": 32, "n_layer": 3, "n_neurons": 8, "n_head": 4, "dropout": 0.1,
             "scan_impl": "sequential"}, 8),
}

# One forward + backward with gradients allocated beforehand (they are model states), after a warm-up step
# of one sequence (one-time imports and caches: torch.utils.checkpoint's first call alone adds ~110 MB of
# RSS); prints the peak RSS (VmHWM, reset at the start) above the start. A fixed mmap threshold makes glibc
# return every freed tensor at once.
PEAK_STEP = """
import json, os, sys
import torch, torch.nn.functional as F
from neurograph.model import build_model
from neurograph.trainer.acceleration import checkpoint_blocks
cfg, mb, T, checkpointing = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
model = build_model(cfg).train()
checkpoint_blocks(model, checkpointing)
ids = torch.randint(0, cfg["vocab_size"], (mb, T + 1))
model(ids[:1, :-1]).sum().backward()  # the warm-up
for p in model.parameters():
    p.grad = torch.zeros_like(p)
def status_kib(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # resets the peak to the current RSS
start = status_kib("VmRSS:")
logits = model(ids[:, :-1])
loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
del logits
loss.backward()
print((status_kib("VmHWM:") - start) * 1024)
"""


@pytest.mark.parametrize("arch", ["transformer", "inl"])
@pytest.mark.parametrize("nodes,gpus_per_node", [(1, 2), (8, 8)])
def test_model_states_match_deepspeed_estimators(arch, nodes, gpus_per_node):
    cfg = {"vocab_size": V, **SMALL[arch][0]}
    total, largest = model_to_params(build_model(cfg))  # DeepSpeed's own count on the real model
    plan = make_plan(parse_model_config(cfg), TrainerConfig(precision="bf16"), 3, 128, nodes, gpus_per_node, "h100")
    assert (plan.params, plan.largest_layer_params) == (total, largest)
    _, zero2 = estimate_zero2_model_states_mem_needs(total, gpus_per_node, nodes, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(total, largest, gpus_per_node, nodes, cpu_offload=False,
                                                         cpu_offload_params=False)
    assert plan.model_states_gib[2]["total"] * GIB == pytest.approx(zero2, rel=0.05)
    assert plan.model_states_gib[3]["total"] * GIB == pytest.approx(zero3, rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("arch,checkpointing", [(arch, "none") for arch in SMALL] + [("inl", "layers"),
                                                                                   ("inl", "selective")])
def test_activations_match_measured_peak_memory(arch, checkpointing):
    cfg, mb = SMALL[arch]
    cfg, seq_len = {"vocab_size": V, **cfg}, 128
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PEAK_STEP, json.dumps(cfg), str(mb), str(seq_len), checkpointing],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = int(proc.stdout.split()[-1])
    planned = mb * activation_bytes_per_sequence(parse_model_config(cfg), seq_len, "fp32")[checkpointing]
    assert planned == pytest.approx(measured, rel=0.25)


def test_plan_arithmetic_and_checkpointing():
    cfg = parse_model_config({"vocab_size": V, **SMALL["inl"][0]})
    trainer = TrainerConfig(precision="bf16", micro_batch_size=4, grad_accum_steps=2)
    plan = make_plan(cfg, trainer, 2, 128, 2, 4, "a100", tokens=1e9, mfu=0.5)
    assert plan.tokens_per_step == 4 * 2 * 8 * 128
    assert plan.steps == -(-int(1e9) // plan.tokens_per_step)
    seconds = plan.flops_per_token * 1e9 / (0.5 * 312e12 * 8)
    assert plan.wall_clock_hours == pytest.approx(seconds / 3600)
    assert plan.gpu_hours == pytest.approx(seconds * 8 / 3600)
    assert plan.checkpoint_gib * GIB == 14 * plan.params
    assert plan.activations_gib["layers"] < plan.activations_gib["none"]
    assert plan.largest_micro_batch["layers"] > plan.largest_micro_batch["none"] > 0
    # the largest micro-batch fills the usable memory (90%) and one more sequence would not fit
    per_seq = (plan.total_gib["none"] - plan.model_states_gib[2]["total"]) / 4
    fits = plan.model_states_gib[2]["total"] + plan.largest_micro_batch["none"] * per_seq
    assert fits <= 0.9 * 80 < fits + per_seq


def test_plan_cli_for_the_1_1b_config(capsys):
    args = ["plan", "--config", str(REPO / "configs/inl_1.1b.yaml"), "--nodes", "8", "--gpus-per-node", "8",
            "--gpu", "h100", "--tokens", "20e9", "--mfu", "0.4"]
    assert main(args + ["--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        model = build_model(parse_model_config(dict(yaml.safe_load(
            (REPO / "configs/inl_1.1b.yaml").read_text())["model"])))
    assert plan["params"] == sum(p.numel() for p in model.parameters())
    assert plan["gpus"] == 64 and plan["steps"] == -(-int(20e9) // plan["tokens_per_step"])
    assert plan["mfu"] == 0.4 and 0 < plan["predicted_mfu"] < 1  # assumed and predicted, apart
    assert plan["predicted_mfu"] == plan["predicted_mfu_by_integrator"]["compiled"]  # auto's choice on CUDA
    assert set(plan["predicted_mfu_by_integrator"]) == set(INTEGRATOR_VARIANTS)
    assert {"matmuls", "attention", "integrator", "communication"} <= set(plan["roofline"]["components"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "largest micro-batch that fits" in out and "predicted MFU" in out and "| integrator " in out
    assert main(["plan", "--config", str(REPO / "configs/missing.yaml")]) == 2


SHIPPED = sorted(p.relative_to(REPO) for p in (REPO / "configs").glob("*.yaml"))
HEAVY = {"configs/inn_large_n.yaml"}  # ~20 s to trace: its N 512 neuron step is the scale INN's, planned below


@pytest.mark.parametrize("path", [p for p in SHIPPED if str(p) not in HEAVY], ids=str)
def test_every_shipped_config_has_a_plan(path, capsys):
    """`neurograph plan` runs on each config as shipped: the memory rows and a predicted MFU in (0, 1)."""
    assert main(["plan", "--config", str(REPO / path), "--gpu", "h100", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["largest_micro_batch"]["none"] >= 0 and 0 < plan["predicted_mfu"] < 1


def test_plan_of_the_paper_inn_which_recomputes_its_own_layers():
    """configs/inn_text8.yaml sets INN's own `checkpoint_layers`: the activations are traced without it and the
    recomputation is the `layers` row (the trace of a checkpointed layer never entered the block's forward)."""
    model_cfg, trainer, seq, stage = _shipped("configs/inn_text8.yaml")
    assert model_cfg.checkpoint_layers
    plan = make_plan(model_cfg, trainer, stage, seq, 1, 1, "h100")
    assert 0 < plan.activations_gib["layers"] < plan.activations_gib["none"]
    assert 0 < plan.predicted_mfu < 1


def test_roofline_counts_the_mamba_conv_as_one_kernel_each_way():
    """INN with the conv as a kernel (causal-conv1d's or Triton's): per layer, forward reads x [B N T d_inner] and
    writes its output, backward reads x and dout and writes dx, in bf16; the PyTorch reference's taps move more."""
    cfg = {"vocab_size": V, **SMALL["inn"][0], "scan_impl": "auto"}
    mb, seq, d_inner = 2, 64, 2 * cfg["d_model"]
    trainer = TrainerConfig(precision="bf16", micro_batch_size=mb)
    fused, eager = (predict(parse_model_config({**cfg, "conv_impl": impl}), trainer, seq, 0, 1, 1, "h100")
                    for impl in ("triton", "reference"))
    x, w = 2 * mb * cfg["n_neurons"] * seq * d_inner, 2 * d_inner * 4  # bytes of x and of the weight [d_inner, K]
    conv = [(key, count) for key, count in micro_step_costs(parse_model_config({**cfg, "conv_impl": "triton"}), mb, seq,
                                                            "bf16").items() if key[:2] == ("elementwise", "vector")]
    # forward x in, out, w in; backward x, dout in, dx out, w in, dw out
    assert sum(key[3] * count for key, count in conv) == pytest.approx(cfg["n_layer"] * (5 * x + 3 * w))
    assert fused.components["elementwise"]["bytes"] < eager.components["elementwise"]["bytes"] - 5 * x
    assert fused.predicted_mfu > eager.predicted_mfu


@pytest.mark.parametrize("path", sorted((REPO / "configs/scale").glob("*.yaml")), ids=lambda p: p.name)
def test_scale_configs_validate_and_carry_their_plan(path):
    """Every section but data (whose shards live on the cluster) validates; the comment holds the plan."""
    from neurograph.launch.config import LauncherConfig
    from neurograph.trainer.config import DeepSpeedConfig, TrackingConfig

    raw = yaml.safe_load(path.read_text())
    parse_model_config(raw["model"])
    TrainerConfig(**raw["trainer"]), DeepSpeedConfig(**raw["deepspeed"]), TrackingConfig(**raw["tracking"])
    LauncherConfig(**raw["launcher"])
    assert "# | time at MFU 40%" in path.read_text()


def _shipped(path: str, **trainer):
    """(model config, trainer config with `trainer` overrides, seq_len, ZeRO stage) of a shipped config."""
    raw = yaml.safe_load((REPO / path).read_text())
    return (parse_model_config(raw["model"]), TrainerConfig(**{**raw["trainer"], **trainer}), raw["data"]["seq_len"],
            DeepSpeedConfig(**raw["deepspeed"]).zero_stage)


def test_roofline_counts_a_transformer_in_closed_form():
    cfg = {"arch": "transformer", "vocab_size": V, "d_model": 64, "n_layer": 3, "n_head": 4, "d_ff": 256,
           "max_seq_len": 128, "dropout": 0.0}
    mb, seq, accum, d, layers = 4, 128, 2, 64, 3
    tokens = mb * seq * accum  # per GPU and step
    r = predict(parse_model_config(cfg), TrainerConfig(precision="bf16", micro_batch_size=mb, grad_accum_steps=accum),
                seq, 1, 1, 2, "h100")
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    linears = layers * (4 * d * d + 2 * d * 256) + d * V  # every linear's weight, the (tied) head included
    assert r.components["matmuls"]["flops"] == 6 * linears * tokens
    # flash attention: QK^T and AV, 4 T d per query and layer forward, causal half; backward 2.5 x forward
    assert r.components["attention"]["flops"] == (1 + 2.5) * 4 * seq * d * 0.5 * layers * tokens
    assert r.components["optimizer"]["bytes"] == 30 * params / 2  # AdamW, bf16: this GPU's half (ZeRO-1)
    assert r.components["communication"]["bytes"] == 2 * (1 / 2) * 2 * params  # reduce-scatter + all-gather, bf16
    assert r.model_flops == model.flops_per_token(seq) * tokens
    assert r.step_seconds == pytest.approx(sum(c["seconds"] for c in r.components.values()))
    assert r.predicted_mfu == pytest.approx(r.model_flops / (r.step_seconds * 989e12))


INL_1_1B = ["configs/inl_1.1b.yaml", "configs/scale/inl_1.1b_64xh100.yaml"]


@pytest.mark.parametrize("path", INL_1_1B)
def test_1_1b_inl_reaches_40_percent_mfu_on_an_h100_with_the_fused_integrator(path):
    """One H100, bf16, each config's micro-batch, no activation checkpointing: the eager loop's K iterations move
    3.5 MiB per token and layer (88% of the block's 4.0 MiB) and cap the step near 15% MFU; fused, the matmuls
    take the step. configs/scale/ recomputes the integrator branches only (`selective`: the loop's saved set does
    not fit without): ~1 point under no recomputation, where checkpointing every block (the forward's matmuls twice)
    costs ~10."""
    model_cfg, trainer, seq, _ = _shipped(path, activation_checkpointing="none")
    by = {v: predict(model_cfg, trainer, seq, 0, 1, 1, "h100", v) for v in ("loop", "fused", "triton")}
    assert by["fused"].predicted_mfu >= 0.40 > 0.20 > by["loop"].predicted_mfu
    # today's kernel: the fused variant's dots plus its saved iterates and pre_k (written, then read by the kernel
    # and the host's matmuls) and graw [K, N, 4D] (written, then read), per layer and micro-step, in bf16
    n, d, r, k = trainer.micro_batch_size * seq, model_cfg.d_model, model_cfg.controller_rank, model_cfg.num_iterations
    saved = 2 * (2 * (k + 1) * n * d + k * n * r)
    extra = (3 * saved + 2 * 4 * k * 2 * n * d) * model_cfg.n_layer * trainer.grad_accum_steps
    assert by["triton"].components["integrator"]["bytes"] - by["fused"].components["integrator"]["bytes"] == extra
    assert by["loop"].predicted_mfu < by["triton"].predicted_mfu < by["fused"].predicted_mfu
    tokens = trainer.micro_batch_size * seq * trainer.grad_accum_steps * model_cfg.n_layer
    assert by["loop"].components["integrator"]["bytes"] / tokens / 2**20 == pytest.approx(3.5, abs=0.1)
    assert by["fused"].components["matmuls"]["seconds"] > by["fused"].step_seconds / 2
    if path.startswith("configs/scale/"):
        shipped = predict(*_shipped(path)[:3], 0, 1, 1, "h100", "fused")
        layers = predict(*_shipped(path, activation_checkpointing="layers")[:3], 0, 1, 1, "h100", "fused")
        assert _shipped(path)[1].activation_checkpointing == "selective"
        assert layers.predicted_mfu < 0.40 <= shipped.predicted_mfu < by["fused"].predicted_mfu


@pytest.mark.parametrize("micro_batch,mode,measured", [(8, "layers", 0.048), (6, "none", 0.066)])
def test_triton_v1_prediction_matches_the_measured_h200_run(micro_batch, mode, measured):
    """BENCHMARKS.md, "Scaling": the 1.1B INL on one H200 (bf16, fused AdamW, no DeepSpeed) at 4.8% MFU
    (checkpointing, 8 x 2048) and 6.6% (6 x 2048) with the Triton integrator, `auto`'s choice then. triton-v1 runs
    at the rate that kernel reached in the op bench of the same session; the step prediction is within 25% of the
    measurement. The loop was not measured at this size: its prediction, 16-20%, is the bound its bytes set."""
    model_cfg, trainer, seq, _ = _shipped("configs/inl_1.1b.yaml", micro_batch_size=micro_batch, grad_accum_steps=1,
                                          activation_checkpointing=mode)
    assert predict(model_cfg, trainer, seq, 0, 1, 1, "h200", "triton-v1").predicted_mfu == pytest.approx(measured,
                                                                                                         rel=0.25)
    assert 0.15 <= predict(model_cfg, trainer, seq, 0, 1, 1, "h200", "loop").predicted_mfu <= 0.21
