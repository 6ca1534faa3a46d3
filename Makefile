# Two entry points on a fresh machine: `make demo` and `make test`.
# Both go through `make install`, which creates .venv and installs NeuroGraph.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# uv installs exactly the committed lock (requirements/, `make lock`); it is bootstrapped from the
# package index into .venv/uv, outside the environment it manages.
UV_VERSION := 0.13.9
UV     := $(VENV)/uv/bin/uv
# Without CUDA the CPU lock (torch's CPU build), never the multi-GB CUDA wheels.
LOCK   ?= requirements/$(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu).txt
# Where torch's CPU build comes from: a folder of wheels (PIP_FIND_LINKS) or an index (TORCH_INDEX_URL,
# e.g. PyTorch's CPU index; its other packages must not shadow PyPI's pins, hence the strategy).
UV_SOURCES := $(foreach d,$(PIP_FIND_LINKS),--find-links $(d)) \
              $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL) --index-strategy unsafe-best-match)

.PHONY: install lock jemalloc demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PYTHON) -m pip install --quiet --target $(VENV)/uv "uv==$(UV_VERSION)"
	$(UV) pip sync --python $(PY) $(UV_SOURCES) $(LOCK)
	if [ "$(LOCK)" = requirements/cuda.txt ]; then \
	  $(UV) pip install --python $(PY) --no-build-isolation --no-deps -r requirements/cuda-kernels.txt; fi
	$(UV) pip install --python $(PY) --no-deps -e .
	$(MAKE) --no-print-directory jemalloc
	touch $(STAMP)

# Recompile requirements/*.txt after a change of pyproject.toml's requirements (needs the package index).
lock: install
	$(PY) -m neurograph.launch.lockfile $(UV)

# jemalloc for CPU training processes (launch/allocator.py): the system's, else Debian's libjemalloc2
# unpacked into the venv (no root needed). Without it training still runs, on glibc malloc, slower.
JEMALLOC := $(VENV)/lib/jemalloc/libjemalloc.so.2
jemalloc:
	@if [ -e $(JEMALLOC) ] || ldconfig -p 2>/dev/null | grep -q libjemalloc.so.2; then exit 0; fi; \
	tmp=$$(mktemp -d); \
	if command -v apt-get >/dev/null && (cd $$tmp && apt-get download libjemalloc2 >/dev/null 2>&1) \
	   && dpkg-deb -x $$tmp/libjemalloc2_*.deb $$tmp/root; then \
	  mkdir -p $(dir $(JEMALLOC)) && cp $$tmp/root/usr/lib/*/libjemalloc.so.2 $(JEMALLOC) && echo "jemalloc: $(JEMALLOC)"; \
	else \
	  echo "jemalloc: not installed (no system copy, no apt-get download): CPU training uses glibc malloc"; \
	fi; \
	rm -rf $$tmp

demo: install
	$(VENV)/bin/neurograph demo

# Two pytest-xdist workers (the machine's 2 cores; TEST_WORKERS=0 runs in this process), each file whole in one
# worker, in collection order; tests/conftest.py puts the Ray cluster's file first.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

test-fast: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" tests

bench: install  # the CPU goal tables of BENCHMARKS.md (the INN paper's comparison: docs/results/inn_paper)
	OMP_NUM_THREADS=2 $(PY) bench/inn.py
	OMP_NUM_THREADS=1 $(PY) bench/inl.py
	OMP_NUM_THREADS=2 $(PY) bench/data.py

clean:
	rm -rf $(VENV) runs build *.egg-info
