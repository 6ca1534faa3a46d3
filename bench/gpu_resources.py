"""Static GPU check on CPU: every Triton kernel compiled ahead of time for sm_80 (A100) and sm_90
(H100) at the shapes of every shipped config (configs/*.yaml, configs/scale/*.yaml) and of
bench/kernels.py (its integrator op also at D 256 and 512), without a GPU. Goal per kernel and target: no register spills, shared memory
within the target's per-block limit.

The launches are recorded, not run: each config's model (Triton impls forced) runs one training
step and one evaluation forward on the meta device, and so do bench/kernels.py's ops and training
rows; a stand-in for Triton's driver names the target, and Triton's `jit_cache_hook` takes each
launch's signature, specialisation and constexprs as Triton's own launcher derived them, and stops
it there. The distinct launches are then compiled for each target: registers and stack read from
the cubin (`cuobjdump --dump-resource-usage`), spill bytes from ptxas's log of that compile, shared
memory from Triton's metadata (what Triton's launcher checks against the device's per-block
maximum; sm_90's 1 KiB reserved block is outside it).

Usage: .venv/bin/python bench/gpu_resources.py [--json]   (a markdown table, or JSON rows)
"""
from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # kernels must be defined compiled, before triton is imported

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
from torch.fx.experimental import _config as fx_config  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from neurograph.kernels.causal_conv1d import triton as causal_conv1d_triton  # noqa: E402
from neurograph.kernels.integrator import triton as integrator_triton  # noqa: E402
from neurograph.kernels.neuron_attention import triton as neuron_attention_triton  # noqa: E402
from neurograph.kernels.selective_scan import triton as selective_scan_triton  # noqa: E402
from neurograph.launch.config import load_config  # noqa: E402
from neurograph.model import model_spec  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KIB = 1024
TARGETS = {"sm_80": (80, 163 * KIB), "sm_90": (90, 227 * KIB)}  # per-block shared memory: A100, H100
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
KERNEL_MODULES = (integrator_triton, selective_scan_triton, neuron_attention_triton, causal_conv1d_triton)
TRITON_IMPLS = ("integrator_impl", "scan_impl", "router_impl", "conv_impl")  # model config fields forced to "triton"


def short_name(kernel: JITFunction) -> str:
    return kernel.fn.__name__.strip("_").removesuffix("_kernel")


@dataclasses.dataclass(frozen=True)
class Launch:
    """What Triton compiles for one launch: the kernel, its specialised signature and constexprs."""
    kernel: JITFunction
    signature: tuple  # ((name, type), ...)
    constants: tuple  # ((path, value), ...)
    attrs: tuple  # ((path, attributes), ...)
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        return short_name(self.kernel)

    def describe(self) -> str:
        """The kernel's own constexprs (True flags by name), warps, stages and the first pointer's dtype."""
        params = self.kernel.params
        flags = [params[i].name if v is True else f"{params[i].name}={v}" for (i,), v in self.constants
                 if params[i].is_constexpr and v is not False]
        dtype = next(t for _, t in self.signature if t.startswith("*"))[1:]
        return f"{' '.join(flags)}; warps {self.num_warps}, stages {self.num_stages}; {dtype}"


@dataclasses.dataclass(frozen=True)
class Resources:
    registers: int
    spill_bytes: int  # spill stores + spill loads
    stack_bytes: int
    shared_bytes: int


class _RecordingDriver:
    """Triton's active driver while launches are recorded: it names a target (sm_90; Triton specialises
    arguments alike for sm_80) and holds no device."""

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return None


@contextlib.contextmanager
def recording(launches: list):
    """Within the block, every Triton kernel launch appends its Launch to `launches` and returns
    without compiling or running."""
    def hook(*, fn, compile, **_):
        launches.append(Launch(fn.jit_function, tuple(compile["signature"].items()), tuple(compile["constants"].items()),
                               tuple((k, tuple(map(tuple, v))) for k, v in compile["configs"][0].items()),
                               compile["num_warps"], compile["num_stages"]))
        return True  # skip the compile: the launcher returns before launching

    before = knobs.runtime.jit_cache_hook, driver._active  # reset_active() would look for a GPU
    driver.set_active(_RecordingDriver(GPUTarget("cuda", 90, 32)))
    knobs.runtime.jit_cache_hook = hook
    try:
        yield
    finally:
        knobs.runtime.jit_cache_hook = before[0]
        driver.set_active(before[1])


def compile_resources(launch: Launch, target: str) -> Resources:
    """Compiles one launch for `target` (sm_80 or sm_90) here, without a GPU; its resources."""
    src = ASTSource(launch.kernel, dict(launch.signature), dict(launch.constants),
                    {k: [list(a) for a in v] for k, v in launch.attrs})
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True  # so ptxas runs and prints its log
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(src, target=GPUTarget("cuda", TARGETS[target][0], 32),
                                  options=dict(num_warps=launch.num_warps, num_stages=launch.num_stages))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
    if spills is None:
        raise RuntimeError(f"no spill counts in ptxas's log of {launch.name} for {target}:\n{log.getvalue()}")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([CUOBJDUMP, "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    used = dict(re.findall(r"(REG|STACK):(\d+)", usage))
    return Resources(int(used["REG"]), int(spills[1]) + int(spills[2]), int(used["STACK"]), compiled.metadata.shared)


def _step(model: torch.nn.Module, batch: int, seq_len: int) -> None:
    """One training forward and backward, then one evaluation forward, on the meta device (where the
    PyTorch adaptive stopping's `nonzero` assumes every token still moving)."""
    ids = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
    model.train()
    model(ids).float().sum().backward()
    model.eval()
    with torch.no_grad(), fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        model(ids)


def _model(cfg, bf16: bool) -> torch.nn.Module:
    switches = {f: "triton" for f in TRITON_IMPLS if hasattr(cfg, f)}
    cfg = dataclasses.replace(cfg, vocab_size=cfg.vocab_size or 256, **switches)
    with torch.device("meta"):
        model = model_spec(cfg.arch).builder(cfg)
    return model.to(torch.bfloat16) if bf16 else model


def config_shapes():
    """(label, run) per shipped config: its model's training step and evaluation forward at its batch."""
    for path in sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs" / "scale").glob("*.yaml")):
        cfg = load_config(path, check_data="if_prepared")
        if not any(hasattr(cfg.model, f) for f in TRITON_IMPLS):
            continue  # a model without Triton impls (Transformer, LSTM) launches no Triton kernel
        label = str(path.relative_to(REPO / "configs").with_suffix(""))
        yield label, lambda cfg=cfg: _step(_model(cfg.model, cfg.trainer.precision == "bf16"),
                                           cfg.trainer.micro_batch_size, cfg.data.seq_len)


def bench_shapes():
    """(label, run) per op and training row of bench/kernels.py at its GPU shapes (training rows in bf16,
    the kernels' dtype under the bench's bf16 autocast)."""
    spec = importlib.util.spec_from_file_location("bench_kernels", REPO / "bench" / "kernels.py")
    bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
    spec.loader.exec_module(bench)
    # the integrator also at the widths between the tiny INL's and the 1.1B's (D is not a constexpr: the
    # same compiled kernels as at 128 and 1728, listed so that the check names every width it covers)
    between = {f"integrator D={w}": lambda device, small, w=w: bench.integrator_op(device, small, w) for w in (256, 512)}
    for name, make in {**{f"bench {k}": v for k, v in bench.OPS.items()}, **between}.items():
        def run(make=make):
            op = make("meta", False)
            bench.forward_backward(op.impls["triton"], op.inputs())
        yield name, run
    for name, cfg, _, on, (batch, seq_len) in bench.training_cases(smoke=False):
        yield f"bench step: {name}", lambda cfg=cfg, on=on, b=batch, t=seq_len: _step(
            _model(dataclasses.replace(cfg, **on), bf16=True), b, t)
    # attention dropout's mask, rebuilt by the tests (its one block size fits any shape)
    yield "attention_dropout_scale", lambda: neuron_attention_triton.attention_dropout_scale(0, 0.1, (64, 4, 32, 32), "meta")


def kernels() -> list[str]:
    """The names (as Launch.name) of every Triton kernel the kernel modules define."""
    return sorted(short_name(v) for m in KERNEL_MODULES for k, v in vars(m).items()
                  if isinstance(v, JITFunction) and k.endswith("_kernel"))


def record_shapes() -> dict[Launch, list[str]]:
    """Every distinct launch of the shipped configs and bench/kernels.py, with the labels of the shapes using it."""
    shapes: dict[Launch, list[str]] = {}
    for label, run in [*config_shapes(), *bench_shapes()]:
        launches: list[Launch] = []
        with recording(launches):
            run()
        for launch in launches:
            if label not in shapes.setdefault(launch, []):
                shapes[launch].append(label)
    return shapes


_JOBS: list[tuple[Launch, str]] = []  # measure()'s compiles, read by its forked workers


def _compile_job(i: int) -> Resources:
    return compile_resources(*_JOBS[i])


def measure() -> list[dict]:
    """One row per distinct launch and target: kernel, meta-parameters, the shapes using it, resources
    and faults. The compiles run in forked processes, one per CPU core."""
    shapes = record_shapes()
    _JOBS[:] = [(launch, target) for launch in sorted(shapes, key=lambda x: (x.name, x.describe())) for target in TARGETS]
    with multiprocessing.get_context("fork").Pool(len(os.sched_getaffinity(0))) as pool:
        resources = pool.map(_compile_job, range(len(_JOBS)), chunksize=1)
    rows = []
    for (launch, target), res in zip(_JOBS, resources):
        limit = TARGETS[target][1]
        faults = (["spills"] if res.spill_bytes else []) + (["shared memory"] if res.shared_bytes > limit else [])
        rows.append(dict(kernel=launch.name, meta=launch.describe(), shapes=shapes[launch], target=target,
                         **dataclasses.asdict(res), shared_limit=limit, faults=faults))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| kernel | meta-parameters | shapes | target | registers | spill B | stack B | shared KiB | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        verdict = f"**{' + '.join(r['faults'])}**" if r["faults"] else "ok"
        shared = f"{r['shared_bytes'] / KIB:.1f} (of {r['shared_limit'] // KIB})"
        lines.append(f"| {r['kernel']} | {r['meta']} | {', '.join(r['shapes'])} | {r['target']} | {r['registers']} | "
                     f"{r['spill_bytes']} | {r['stack_bytes']} | {shared} | {verdict} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="JSON rows (the test's input) instead of the markdown table")
    args = ap.parse_args(argv)
    rows = measure()
    print(json.dumps(dict(kernels=kernels(), rows=rows), indent=1) if args.json else markdown(rows))


if __name__ == "__main__":
    main()
