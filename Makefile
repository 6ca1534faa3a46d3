# Two entry points on a fresh machine: `make demo` and `make test`.
# Both go through `make install`, which creates .venv and installs NeuroGraph.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
TORCH_CPU_SUFFIX ?= +cpu

.PHONY: install jemalloc demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# Without CUDA take the CPU build of torch, never the multi-GB CUDA wheels:
	# a local CPU wheel (PIP_FIND_LINKS) or TORCH_INDEX_URL, e.g. PyTorch's CPU index.
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PIP) install --quiet "torch==$(TORCH_VERSION)"; \
	else \
	  $(PIP) install --quiet "torch==$(TORCH_VERSION)$(TORCH_CPU_SUFFIX)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)); \
	fi
	DS_BUILD_OPS=0 $(PIP) install --quiet -e ".[dev,s3]"
	$(MAKE) --no-print-directory jemalloc
	touch $(STAMP)

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

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install  # the CPU goal tables of BENCHMARKS.md (the ablations, ~25 min: bench/inn_ablations.py)
	OMP_NUM_THREADS=2 $(PY) bench/inn.py
	OMP_NUM_THREADS=1 $(PY) bench/inl.py
	OMP_NUM_THREADS=2 $(PY) bench/data.py

clean:
	rm -rf $(VENV) runs build *.egg-info
