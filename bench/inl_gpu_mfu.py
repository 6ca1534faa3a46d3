"""The 1.1B INL (configs/inl_1.1b.yaml) training on one GPU at the micro-batch the planner says fits, with
each integrator (the PyTorch loop, its torch.compile, the Triton kernel): tokens/s, MFU against the device's
bf16 peak, peak memory measured vs planned. Writes $OUT/inl_1.1b.json (bench/gpu_check.sh, section 4)."""
from __future__ import annotations

import dataclasses
import json
import os
import time

import torch
import torch.nn.functional as F
import yaml

from neurograph.launch.planner import make_plan
from neurograph.model import build_model, parse_model_config
from neurograph.trainer.acceleration import checkpoint_blocks
from neurograph.trainer.config import TrainerConfig
from neurograph.trainer.mfu import table_peak_tflops

IMPLS = ("reference", "compiled", "triton")


def measure(mcfg, raw_trainer: dict, seq: int, gpu: str, device_name: str) -> dict:
    probe = make_plan(mcfg, TrainerConfig(**{**raw_trainer, "micro_batch_size": 1}), 0, seq, 1, 1, gpu)
    mode = "none" if probe.largest_micro_batch["none"] >= 1 else "layers"
    mb = max(1, min(8, probe.largest_micro_batch[mode]))
    plan = make_plan(mcfg, TrainerConfig(**{**raw_trainer, "micro_batch_size": mb}), 0, seq, 1, 1, gpu)
    torch.manual_seed(0)
    model = build_model(mcfg).cuda().to(torch.bfloat16).train()
    checkpoint_blocks(model, mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, mcfg.vocab_size, (mb, seq + 1), device="cuda")

    def step():
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (and compilation)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0, n = time.perf_counter(), 5
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / n
    tokens_per_s = mb * seq / dt
    return {"device": device_name, "integrator_impl": mcfg.integrator_impl, "checkpointing": mode, "micro_batch": mb,
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * model.flops_per_token(seq) / (table_peak_tflops(device_name, "bf16") * 1e12),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "planned_gib": plan.total_gib[mode]}


def main() -> None:
    raw = yaml.safe_load(open("configs/inl_1.1b.yaml"))
    name = torch.cuda.get_device_name()
    gpu = "h200" if "H200" in name else "a100" if "A100" in name else "h100"
    rows = []
    for impl in IMPLS:
        mcfg = dataclasses.replace(parse_model_config(raw["model"]), integrator_impl=impl)
        try:
            rows.append(measure(mcfg, raw["trainer"], raw["data"]["seq_len"], gpu, name))
        except Exception as err:  # the row says why (e.g. out of memory, a kernel that cannot launch)
            rows.append({"device": name, "integrator_impl": impl, "error": f"{type(err).__name__}: {str(err)[:200]}"})
        print(json.dumps(rows[-1]), flush=True)
        json.dump(rows, open(os.path.join(os.environ.get("OUT", "."), "inl_1.1b.json"), "w"), indent=1)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
