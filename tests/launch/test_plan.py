"""`neurograph plan`: model states against DeepSpeed's estimators, activations against the measured
peak memory of real training steps, the time and checkpoint arithmetic, the CLI."""
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
from neurograph.launch.planner import GIB, make_plan, traced_activation_bytes
from neurograph.model import build_model, parse_model_config
from neurograph.trainer.config import TrainerConfig

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

# One forward + backward with gradients allocated beforehand (they are model states); prints the
# peak RSS (VmHWM, reset at the start) above the start. A fixed mmap threshold makes glibc return
# every freed tensor at once.
PEAK_STEP = """
import json, os, sys
import torch, torch.nn.functional as F
from neurograph.model import build_model
cfg, mb, T = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = build_model(cfg).train()
ids = torch.randint(0, cfg["vocab_size"], (mb, T + 1))
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
@pytest.mark.parametrize("arch", SMALL)
def test_activations_match_measured_peak_memory(arch):
    cfg, mb = SMALL[arch]
    cfg, seq_len = {"vocab_size": V, **cfg}, 128
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PEAK_STEP, json.dumps(cfg), str(mb), str(seq_len)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = int(proc.stdout.split()[-1])
    act = traced_activation_bytes(parse_model_config(cfg), 1, seq_len, "fp32")
    planned = mb * (act["per_layer"] * cfg["n_layer"] + act["rest"])
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
    assert main(args) == 0
    assert "largest micro-batch that fits" in capsys.readouterr().out
    assert main(["plan", "--config", str(REPO / "configs/missing.yaml")]) == 2


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
