#!/usr/bin/env bash
# The wheels a stock CUDA image (Python 3.12, PyTorch, Triton, numpy) lacks to run bench/gpu_check.sh, built
# here, where the package index answers, for a GPU node that fetches nothing: NeuroGraph itself and the pins of
# requirements/cuda.txt for what training and the GPU tests import beyond torch and triton (Ray and MLflow stay
# out: training with tracking off imports neither). gpu_check.sh installs them offline into the image's Python.
# Usage: bash bench/gpu_wheels.sh [OUT]   (default runs/gpu_wheels; PYVER, the node's Python, default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_wheels}
PYVER=${PYVER:-3.12}
PY=${PY:-.venv/bin/python}
PACKAGES="pydantic pydantic-core annotated-types typing-inspection deepspeed hjson py-cpuinfo msgpack einops
          ninja psutil webdataset braceexpand safetensors sentencepiece pyyaml tqdm packaging
          pytest pluggy iniconfig pygments"  # the GPU tests of gpu_check.sh's section 1
rm -rf "$OUT" && mkdir -p "$OUT"

pin() {  # the lock's version of a package for the node's Python
  "$PY" - "$1" "$PYVER" <<'EOF'
import sys
from packaging.markers import Marker
from packaging.requirements import Requirement
name, pyver = sys.argv[1], sys.argv[2]
env = {"python_version": pyver, "python_full_version": pyver + ".0", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "implementation_name": "cpython"}
for line in open("requirements/cuda.txt"):
    line = line.split("#")[0].strip()
    if not line or line.startswith("-"):
        continue
    req = Requirement(line)
    if req.name.lower() == name and (req.marker is None or req.marker.evaluate(env)):
        print(f"{req.name}{req.specifier}")
        break
else:
    sys.exit(f"{name} is not pinned in requirements/cuda.txt for Python {pyver}")
EOF
}

pins=$(for p in $PACKAGES; do pin "$p"; done)
# binary wheels for the node's platform; deepspeed publishes a source archive only: built here, its ops JIT-built there
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --dest "$OUT" $(grep -v '^deepspeed' <<<"$pins")
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$OUT" $(grep '^deepspeed' <<<"$pins")
# NeuroGraph's own wheel from a copy of the checkout's files (tracked, and new ones not ignored): setuptools builds
# in the source folder, and a build/ left there by an earlier layout would put stale modules into the wheel
src=$(mktemp -d)
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  if [[ -e $f ]]; then cp --parents -- "$f" "$src"; fi  # skips a tracked file deleted in the working tree
done
.venv/uv/bin/uv build --quiet --wheel --out-dir "$OUT" "$src"
rm -rf "$src"
ls -1 "$OUT"
du -sh "$OUT"
