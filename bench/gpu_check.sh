#!/usr/bin/env bash
# Every GPU row of BENCHMARKS.md in one script (about 9 min on one H200), for whenever a CUDA GPU is at hand.
# Sections, each under its own time limit and writing into OUT_DIR, so a slow one cannot hide the others' results:
#  0. the device, driver, torch and Triton versions
#  1. the test suite's CUDA paths: the Triton kernels compiled for the device against their references
#     (mamba-ssm's comparisons where it is installed)
#  2. bench/kernels.py's per-op rows (eager, Triton, mamba-ssm)
#  3. bench/kernels.py's training-step rows, without and with the kernels (best of 2), and where each
#     step with the kernels spends its device time (torch.profiler)
#  4. the 1.1B INL (configs/inl_1.1b.yaml) at the micro-batch the planner says fits one GPU:
#     steps/s, tokens/s, MFU, peak memory measured vs planned
#  5. a scaled-down INL and INN, bf16, NCCL, world size 1, through `neurograph train` (train/mfu logged)
#  6. bench/kernels.py's torch.compile rows, last, one op per process under COMPILE_S seconds (default 60):
#     compiling the scan's 512-step loop alone took over 150 s on an H200
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (copy the figures from OUT_DIR/*.txt, *.json to BENCHMARKS.md)
# PY names the interpreter (default .venv/bin/python; the CLI runs as `$PY -m neurograph.launch.cli`); SECTIONS picks some
# (default "0 1 2 3 4 5 6"); data and runs of section 5 go to OUT_DIR/data and OUT_DIR/<config>.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
SECTIONS=" ${SECTIONS:-0 1 2 3 4 5 6} "
section() { [[ $SECTIONS == *" ${1%%.*} "* ]] || return 1; echo "== $1 ($(date -u +%H:%M:%S))"; }

section "0. device" && {
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/device.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
    | tee -a "$OUT/device.txt"
}
section "1. CUDA paths of the test suite" && {
timeout 120 "$PY" -m pytest -q -p no:cacheprovider --tb=short -rfEs tests/kernels/test_triton_selective_scan.py \
    tests/kernels/test_triton_integrator.py tests/kernels/test_triton_neuron_attention.py \
    tests/kernels/test_triton_models.py tests/kernels/test_selective_scan.py -k "triton or cuda" > "$OUT/pytest.txt" 2>&1
echo "pytest exit $?"; tail -25 "$OUT/pytest.txt"
}
section "2. kernel rows" && {
timeout 100 "$PY" bench/kernels.py --repeats 5 --sections ops --impls eager,triton,mamba-ssm 2>&1 | tee "$OUT/kernels.txt"
}
section "3. training-step rows" && {
timeout 150 "$PY" bench/kernels.py --repeats 2 --sections training --profile 2>&1 | tee "$OUT/training.txt"
}
section "4. INL 1.1B on one GPU at the planner's micro-batch" && {
timeout 100 "$PY" - "$OUT" <<'PYEOF'
import json, sys, time
import torch, torch.nn.functional as F, yaml
from neurograph.launch.planner import make_plan
from neurograph.model import build_model, parse_model_config
from neurograph.trainer.acceleration import checkpoint_blocks
from neurograph.trainer.config import TrainerConfig
from neurograph.trainer.mfu import table_peak_tflops

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
}
section "5. scaled-down INL and INN, bf16, NCCL, 1 process" && {
timeout 30 "$PY" -m neurograph.launch.cli data prepare --input data_pipeline/corpora/*.xz --out "$OUT/data" \
    --tokenizer char --seq-len 256 --val-fraction 0.05 --samples-per-shard 64 > "$OUT/prepare.txt" 2>&1 \
    || tail -5 "$OUT/prepare.txt"
for cfg in inl_tiny inn_text8; do
  timeout 75 "$PY" -m neurograph.launch.cli train --config "configs/$cfg.yaml" data.path="$OUT/data" data.seq_len=128 \
      model.vocab_size=null trainer.run_dir="$OUT/$cfg" trainer.precision=bf16 trainer.max_steps=60 \
      trainer.log_every=20 trainer.eval_every=0 trainer.checkpoint_every=0 trainer.num_processes=1 \
      tracking.enabled=false > "$OUT/$cfg.txt" 2>&1 || tail -8 "$OUT/$cfg.txt"
  tail -1 "$OUT/$cfg/metrics.jsonl" | tee "$OUT/$cfg.last.json"
done
}
section "6. torch.compile rows" && {
for op in integrator-128 integrator-1728 dense-attention topk-attention scan; do  # one compile cannot hide the rest
  timeout "${COMPILE_S:-60}" "$PY" bench/kernels.py --repeats 5 --sections ops --impls compiled --ops "$op" 2>&1 \
      | grep -v "^device\|^measured\|^op " | tee -a "$OUT/compiled.txt"
done
}
echo "== done: $OUT ($(date -u +%H:%M:%S))"
