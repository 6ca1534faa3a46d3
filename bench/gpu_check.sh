#!/usr/bin/env bash
# Every GPU row of BENCHMARKS.md in one prepared run (under 9 minutes), for a fresh GPU machine that fetches nothing.
# Before: `bash bench/gpu_wheels.sh` here (the wheels the image lacks, NeuroGraph's own included), carried to
# runs/gpu_wheels. Sections, each under its own time limit, so a slow one cannot hide the others' results:
#  0. the device and versions; the wheels installed offline into the image's Python (its torch kept)
#  1. the test suite's CUDA paths: the Triton kernels against their references (mamba-ssm's where installed)
#  2. bench/kernels.py's per-op rows: eager, Triton, mamba-ssm, causal-conv1d
#  3. bench/kernels.py's training-step rows, without and with the kernels, and where each step spends its time
#  4. the 1.1B INL (configs/inl_1.1b.yaml) at the planner's micro-batch with the loop, compiled and Triton
#     integrators: tokens/s, MFU, peak memory measured vs planned
#  5. a scaled-down INL and INN through `neurograph train` (bf16, NCCL, one process)
#  6. bench/kernels.py's torch.compile rows of the integrator, one width per process
#  then one verdict line per goal of issue 26 (bench/gpu_verdicts.py): met / not met / not run.
# Usage: bash bench/gpu_check.sh [--dry-run] [OUT_DIR]   (default runs/gpu_check; at most 6 files written there)
# PY names the interpreter (default python3, the image's), WHEELS the wheel folder (default runs/gpu_wheels),
# SECTIONS picks some (default "0 1 2 3 4 5 6"). --dry-run prints each section, its limit and its file, and exits.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0; [[ ${1:-} == --dry-run ]] && { DRY=1; shift; }
export OUT=${1:-runs/gpu_check} PY=${PY:-python3} WHEELS=${WHEELS:-runs/gpu_wheels} PYTHONUNBUFFERED=1
SECTIONS=" ${SECTIONS:-0 1 2 3 4 5 6} "
PLAN=(  # number|time limit (s)|file in OUT_DIR|what
  "0|45|device.txt|device, versions, offline install of the wheels"
  "1|90|tests.txt|the test suite's CUDA paths"
  "2|80|kernels.txt|per-op rows: eager, Triton, mamba-ssm, causal-conv1d"
  "3|90|training.txt|training-step rows with the kernels' profile"
  "4|150|inl_1.1b.json|the 1.1B INL at the planner's micro-batch: loop, compiled, Triton integrators"
  "5|45|training.txt|scaled-down INL and INN through neurograph train"
  "6|40|kernels.txt|torch.compile rows of the integrator"
)

s0() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    PIP_BREAK_SYSTEM_PACKAGES=1 "$PY" -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl || echo "wheels: install failed"
  else
    echo "wheels: none in $WHEELS (bash bench/gpu_wheels.sh prepares them)"
  fi
  "$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
}
s1() {
  "$PY" -m pytest -q -p no:cacheprovider --tb=short -rfEs tests/kernels/test_triton_selective_scan.py \
      tests/kernels/test_triton_integrator.py tests/kernels/test_triton_neuron_attention.py \
      tests/kernels/test_triton_models.py tests/kernels/test_selective_scan.py tests/kernels/test_compiled_integrator.py \
      tests/kernels/test_triton_causal_conv1d.py \
      -k "triton or cuda or compiled"
}
s2() { "$PY" bench/kernels.py --repeats 5 --sections ops --impls eager,triton,mamba-ssm,causal-conv1d; }
s3() { "$PY" bench/kernels.py --repeats 2 --sections training --profile; }
s4() { "$PY" bench/inl_gpu_mfu.py; }
s5() {
  local work; work=$(mktemp -d)
  "$PY" -m neurograph.launch.cli data prepare --input data_pipeline/corpora/*.xz --out "$work/data" --tokenizer char \
      --seq-len 256 --val-fraction 0.05 --samples-per-shard 64 > "$work/prepare.txt" 2>&1 || tail -5 "$work/prepare.txt"
  for cfg in inl_tiny inn_text8; do
    "$PY" -m neurograph.launch.cli train --config "configs/$cfg.yaml" data.path="$work/data" data.seq_len=128 \
        model.vocab_size=null trainer.run_dir="$work/$cfg" trainer.precision=bf16 trainer.max_steps=60 \
        trainer.log_every=20 trainer.eval_every=0 trainer.checkpoint_every=0 trainer.num_processes=1 \
        tracking.enabled=false 2>&1 | grep -E "step +60/|Error" ; echo "$cfg: $(tail -1 "$work/$cfg/metrics.jsonl")"
  done
  rm -rf "$work"
}
s6() {  # the integrator's, which its goal compares with Triton (compiling the scan's loop took over 150 s on an H200)
  for op in integrator-128 integrator-1728; do
    timeout 20 "$PY" bench/kernels.py --repeats 5 --sections ops --impls compiled --ops "$op" | grep -v "^device\|^measured\|^op "
  done
}
export -f s0 s1 s2 s3 s4 s5 s6

total=0
((DRY)) || mkdir -p "$OUT"
for row in "${PLAN[@]}"; do
  IFS='|' read -r n limit file what <<<"$row"
  [[ $SECTIONS == *" $n "* ]] || continue
  total=$((total + limit))
  if ((DRY)); then printf '%s. %-80s %4d s  -> %s\n' "$n" "$what" "$limit" "$OUT/$file"; continue; fi
  [[ $file == *.json ]] && target=/dev/null || target="$OUT/$file"  # section 4 writes its own JSON
  echo "== $n. $what ($(date -u +%H:%M:%S), limit $limit s)" | tee -a "$target"
  timeout "$limit" bash -c "s$n" 2>&1 | tee -a "$target"
  (( PIPESTATUS[0] == 124 )) && echo "section $n: stopped at its $limit s limit" | tee -a "$target"
done
if ((DRY)); then
  echo "verdicts: one line per goal  -> $OUT/verdicts.txt"
  echo "total ${total} s of time limits; files: $(printf '%s\n' "${PLAN[@]}" | cut -d'|' -f3 | sort -u | tr '\n' ' ')verdicts.txt"
  exit 0
fi
"$PY" bench/gpu_verdicts.py "$OUT" | tee "$OUT/verdicts.txt"
echo "== done: $OUT ($(date -u +%H:%M:%S))"
