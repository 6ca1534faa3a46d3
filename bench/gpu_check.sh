#!/usr/bin/env bash
# The GPU checks of issue 14, in one script (< 10 min on one H100/H200), for whenever a CUDA GPU is at hand:
#  1. the test suite's CUDA paths (kernels and models; mamba-ssm where it is installed)
#  2. a scaled-down INL and INN, bf16, NCCL, world size 1, through `neurograph train` (train/mfu logged)
#  3. the 1.1B INL (configs/inl_1.1b.yaml) at the micro-batch the planner says fits one GPU:
#     steps/s, tokens/s, MFU, peak memory measured vs planned
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (figures go to OUT_DIR/gpu_check.md; copy them to BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
PY=${PY:-.venv/bin/python}
NG=${NG:-.venv/bin/neurograph}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"

echo "== 1. CUDA paths of the test suite"
timeout 240 "$PY" -m pytest -q -x -m "not slow" tests/kernels tests/model 2>&1 | tail -5 | tee "$OUT/pytest.txt"

echo "== 2. scaled-down INL and INN, bf16, NCCL, 1 process"
[ -f "$OUT/data/manifest.json" ] || "$NG" data prepare --input data_pipeline/corpora/*.xz --out "$OUT/data" \
    --tokenizer char --seq-len 256 --val-fraction 0.05 --samples-per-shard 64
for cfg in inl_tiny inn_text8; do
  timeout 150 "$NG" train --config "configs/$cfg.yaml" data.path="$OUT/data" data.seq_len=128 model.vocab_size=null \
      trainer.run_dir="$OUT/$cfg" trainer.precision=bf16 trainer.max_steps=60 trainer.log_every=20 \
      trainer.eval_every=0 trainer.checkpoint_every=0 trainer.num_processes=1 tracking.enabled=false
  tail -1 "$OUT/$cfg/metrics.jsonl" | tee "$OUT/$cfg.last.json"
done

echo "== 3. INL 1.1B on one GPU at the planner's micro-batch"
timeout 240 "$PY" - "$OUT" <<'PYEOF'
import json, sys, time
import torch, torch.nn.functional as F, yaml
from launch.plan import make_plan
from model import build_model, parse_model_config
from trainer.acceleration import checkpoint_blocks
from trainer.config import TrainerConfig
from trainer.mfu import table_peak_tflops

out = sys.argv[1]
raw = yaml.safe_load(open("configs/inl_1.1b.yaml"))
name = torch.cuda.get_device_name()
gpu = "h200" if "H200" in name else "h100"
mcfg = parse_model_config(raw["model"])
seq = raw["data"]["seq_len"]
rows = []
for mode in ("layers", "none"):
    probe = make_plan(mcfg, TrainerConfig(**{**raw["trainer"], "micro_batch_size": 1}), 0, seq, 1, 1, gpu)
    mb = max(1, min(8, probe.largest_micro_batch[mode]))
    plan = make_plan(mcfg, TrainerConfig(**{**raw["trainer"], "micro_batch_size": mb}), 0, seq, 1, 1, gpu)
    torch.manual_seed(0)
    model = build_model(mcfg).cuda().to(torch.bfloat16).train()
    checkpoint_blocks(model, mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, mcfg.vocab_size, (mb, seq + 1), device="cuda")
    def step():
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
        opt.step(); opt.zero_grad(set_to_none=True)
    step(); torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter(); n = 5
    for _ in range(n):
        step()
    torch.cuda.synchronize(); dt = (time.perf_counter() - t0) / n
    tok_s = mb * seq / dt
    mfu = tok_s * model.flops_per_token(seq) / (table_peak_tflops(name, "bf16") * 1e12)
    rows.append({"device": name, "checkpointing": mode, "micro_batch": mb, "steps_per_s": 1 / dt, "tokens_per_s": tok_s,
                 "mfu": mfu, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                 "planned_gib": plan.total_gib[mode]})
    print(json.dumps(rows[-1]), flush=True)
    del model, opt; torch.cuda.empty_cache()
json.dump(rows, open(f"{out}/inl_1.1b.json", "w"), indent=1)
PYEOF
echo "done: $OUT"
