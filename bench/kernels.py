"""Kernel benchmarks (GPU), one table per run.

1. Per op (selective scan, the Mamba conv, integrator iterations, dense and top-k neuron attention):
   forward + backward time of the eager PyTorch reference, `torch.compile` of that reference, the Triton
   kernel, and mamba-ssm's CUDA scan and causal-conv1d's conv where they install; each op's FLOP and byte counts and the
   achieved fraction of the device's peak memory bandwidth and fp32 FLOP/s. Goals: Triton >= 1.5x
   the compiled reference; >= 60% of peak bandwidth for the elementwise-bound ops (scan, integrator).
2. One training step (forward, backward, AdamW) of the paper INN (configs/inn_text8.yaml, dropout
   0.1, inside the attention kernels with impl triton) and of INL at the tiny and the 1.1B width (2 layers), with
   the kernels (impl triton) and without (the PyTorch paths). Goal: INN step >= 3x with kernels.

Without a CUDA device every row prints "not run". `--smoke` checks the script itself instead: tiny
sizes on CPU, Triton through its interpreter, no torch.compile, one repeat (times meaningless).

Usage: .venv/bin/python bench/kernels.py [--smoke] [--repeats N] [--sections ops,training] [--impls eager,triton,...]
                                         [--ops scan,integrator-128,...] [--profile]
(bench/gpu_check.sh runs the compiled rows last, one op per process: compiling the scan's 512-step loop
took over 150 s on an H200.)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

if "--smoke" in sys.argv:  # must precede any import of triton (see kernels/triton_runtime.py)
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402


from neurograph.kernels.causal_conv1d import causal_conv1d_silu_ref  # noqa: E402
from neurograph.kernels.integrator import integrator_iterations_reference  # noqa: E402
from neurograph.kernels.neuron_attention import neuron_attention_reference, topk_attention_reference  # noqa: E402
from neurograph.kernels.selective_scan import selective_scan, selective_scan_flops, selective_scan_ref  # noqa: E402
from neurograph.model.inl import INLConfig, INLModel  # noqa: E402
from neurograph.model.inn import INN, INNConfig  # noqa: E402
from neurograph.trainer.mfu import table_peak_tflops, table_rates  # noqa: E402


@dataclass
class Op:
    """One benchmarked op: `inputs()` -> tensors (the differentiable ones require grad); each impl
    maps them to one output tensor; FLOPs and bytes of forward + backward."""
    name: str
    inputs: Callable[[], tuple]
    impls: dict[str, Callable]
    flops: float
    bytes: float


def scan_op(device, small: bool) -> Op:
    b, d, t, s = (2, 8, 16, 4) if small else (256, 512, 512, 16)  # paper INN: 8 x 32 neuron sequences

    def inputs():
        r = lambda *shape: torch.randn(*shape, device=device)  # noqa: E731
        tm = lambda f, std=1.0: (std * r(b, t, f)).transpose(1, 2)  # noqa: E731  [B, F, T] over time-major memory
        # the layout the models pass (MambaBlock: channels contiguous, so a step's channel loads are contiguous)
        x = (tm(d), tm(d, 0.5), -torch.rand(d, s, device=device), tm(s), tm(s), r(d), tm(d), r(d))
        return tuple(v.requires_grad_() for v in x)

    def impl(name):
        return lambda *x: selective_scan(*x[:7], delta_bias=x[7], delta_softplus=True, impl=name)

    ref = lambda *x: selective_scan_ref(*x[:7], delta_bias=x[7], delta_softplus=True)  # noqa: E731
    impls = {"eager": impl("chunked"), "compiled": torch.compile(ref), "triton": impl("triton")}
    if device == "cuda":
        impls["mamba-ssm"] = impl("cuda")
    # forward reads u, delta, z, B, C and writes y; backward reads those and dy, writes their gradients
    elements = 3 * b * d * t + 2 * b * s * t
    return Op("selective scan", inputs, impls, 3 * selective_scan_flops(b, t, d, s), 4 * (2 * elements + b * d * t + elements + b * d * t))


def conv_op(device, small: bool) -> Op:
    """The Mamba block's causal conv + SiLU at the paper INN's shape (16 x 32 neuron sequences of 256 steps,
    d_inner 512), on the half of in_proj's output the block passes."""
    m, t, d, k = (3, 20, 40, 4) if small else (16 * 32, 256, 512, 4)

    def inputs():
        xz = torch.randn(m, t, 2 * d, device=device)
        return xz[..., :d].requires_grad_(), (0.5 * torch.randn(d, k, device=device)).requires_grad_(), \
            torch.randn(d, device=device).requires_grad_()

    from neurograph.kernels.causal_conv1d import causal_conv1d_silu

    impls = {"eager": causal_conv1d_silu_ref, "compiled": torch.compile(causal_conv1d_silu_ref),
             "triton": lambda *x: causal_conv1d_silu(*x, impl="triton")}
    if device == "cuda":
        impls["causal-conv1d"] = lambda *x: causal_conv1d_silu(*x, impl="cuda")
    # forward reads x and writes the output; backward reads x and dout, writes dx (K taps and SiLU: ~3 k FLOPs each)
    return Op("causal conv1d + SiLU", inputs, impls, 3 * k * 3 * m * t * d, 4 * 5 * m * t * d)


def integrator_op(device, small: bool, width: int) -> Op:
    """K iterations over 8 x 1024 tokens at INL's tiny width (128) or the 1.1B's (1728), fp32 (the kernel's
    dots at tf32x3; see kernels/integrator/triton.py)."""
    n, d, r, k = (24, min(width, 300), 16, 3) if small else (8 * 1024, width, 64, 5)  # smoke: D over several tiles

    def inputs():
        rnd = lambda *shape, std=1.0: torch.randn(*shape, device=device) * std  # noqa: E731
        x = (rnd(n, d), rnd(n, r, std=0.5), rnd(r, d, std=0.05), rnd(r, d, std=0.05), rnd(4 * d, r, std=0.05),
             rnd(4 * d, std=0.5), torch.ones(4, device=device), torch.zeros(4, device=device), rnd(d, std=0.1))
        return tuple(v.requires_grad_() for v in x)

    from neurograph.kernels.integrator import integrator_iterations

    ref = lambda *x: integrator_iterations_reference(*x, 0.1, k)  # noqa: E731
    impls = {"eager": ref, "compiled": torch.compile(ref), "triton": lambda *x: integrator_iterations(*x, 0.1, k, impl="triton")}
    flops = 3 * k * (2 * n * d * r * 2 + 2 * n * r * 4 * d + 20 * n * d)  # controller matmuls + the update
    # forward: z0, ctx in; K states z, v and pre out; backward: those in, dz0, K raw and pre gradients out
    moved = n * (d + r) + k * n * (2 * d + r) + k * n * (2 * d + r) + n * d + k * n * (4 * d + r) + n * d
    return Op(f"integrator (K iters, D={d})", inputs, impls, flops, 4 * moved)


def attention_op(device, small: bool, topk: Optional[int]) -> Op:
    m, n, h, hd = (6, 5, 2, 8) if small else ((4096, 32, 4, 64) if topk is None else (1024, 256, 4, 64))

    def inputs():
        x = [torch.randn(m, n, h, hd, device=device).requires_grad_() for _ in range(3)]
        if topk is not None:
            x.append(torch.randint(0, n, (m, n, min(topk, n)), device=device))
        return tuple(x)

    from neurograph.kernels.neuron_attention import neuron_attention, topk_neuron_attention

    if topk is None:
        ref, fast = neuron_attention_reference, lambda *x: neuron_attention(*x, impl="triton")
        keys = n
    else:
        ref, fast = topk_attention_reference, lambda *x: topk_neuron_attention(*x, impl="triton")
        keys = min(topk, n)
    flops = 3.5 * 4 * m * h * n * keys * hd  # q.k and p.v; backward ~2.5x forward
    name = "dense neuron attention" if topk is None else f"top-{topk} neuron attention"
    return Op(name, inputs, {"eager": ref, "compiled": torch.compile(ref), "triton": fast}, flops, 4 * 8 * m * n * h * hd)


OPS = {  # name -> Op at the benchmark's shape (device, smoke)
    "scan": scan_op,
    "conv": conv_op,
    "integrator-128": lambda device, small: integrator_op(device, small, 128),
    "integrator-1728": lambda device, small: integrator_op(device, small, 1728),
    "dense-attention": lambda device, small: attention_op(device, small, None),
    "topk-attention": lambda device, small: attention_op(device, small, 8),
}


def achievable_rates() -> tuple[float, float]:
    """What this GPU reaches on the two simplest jobs, measured: a 2 GiB device copy (TB/s, bytes
    read + written) and an 8192^3 fp32 matmul without TF32 (TFLOP/s)."""
    src = torch.empty(2**29, device="cuda")
    dst = torch.empty_like(src)
    copy_s = best_time(lambda: dst.copy_(src), "cuda", 5)
    a, b = torch.randn(8192, 8192, device="cuda"), torch.randn(8192, 8192, device="cuda")
    matmul_s = best_time(lambda: a @ b, "cuda", 5)
    return 2 * src.nbytes / copy_s / 1e12, 2 * 8192**3 / matmul_s / 1e12


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device, repeats: int) -> float:
    fn()  # warm up (compilation, autotuning)
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def forward_backward(impl, x):
    out = impl(*x)
    out.float().sum().backward()


def op_rows(ops: list[Op], impls: set[str], device, repeats: int, smoke: bool, peak_tbs: Optional[float],
            peak_tflops: Optional[float]):
    print(f"{'op':28} {'impl':10} {'ms':>9} {'GB/s':>8} {'% bw':>6} {'TFLOP/s':>8} {'% fp32':>7}")
    for op in ops:
        x = op.inputs()
        for name, impl in op.impls.items():
            if name not in impls:
                continue
            if smoke and name == "compiled":
                print(f"{op.name:28} {name:10} {'not run (smoke)':>9}")
                continue
            try:
                t = best_time(lambda: forward_backward(impl, x), device, repeats)
            except Exception as err:  # e.g. mamba-ssm absent: the row says why
                print(f"{op.name:28} {name:10} not run ({type(err).__name__}: {str(err)[:60]})")
                continue
            gbs, tflops = op.bytes / t / 1e9, op.flops / t / 1e12
            bw = f"{100 * gbs / (peak_tbs * 1e3):5.1f}%" if peak_tbs else "   n/a"
            fl = f"{100 * tflops / peak_tflops:6.1f}%" if peak_tflops else "    n/a"
            print(f"{op.name:28} {name:10} {1e3 * t:9.3f} {gbs:8.1f} {bw:>6} {tflops:8.2f} {fl:>7}")


def training_cases(smoke: bool) -> list:
    """(name, config, switches without the kernels, switches with them, (batch, T)) of each training row."""
    inn = dict(vocab_size=27, dropout=0.1, checkpoint_layers=False)
    tiny = dict(vocab_size=65, d_model=128, n_layer=4, n_head=4, num_iterations=5, max_seq_len=128, controller_rank=64)
    wide = dict(vocab_size=32000, d_model=1728, n_layer=2, n_head=32, num_iterations=5, feedforward_dim=6912,
                max_seq_len=1024, controller_rank=64)
    cases = [("INN paper (text8)", INNConfig(**inn), dict(scan_impl="chunked", router_impl="reference", conv_impl="reference"),
              dict(scan_impl="triton", router_impl="triton", conv_impl="triton"), (16, 256)),
             ("INL tiny", INLConfig(**tiny), dict(integrator_impl="reference"), dict(integrator_impl="triton"), (16, 128)),
             ("INL 1.1B width, 2 layers", INLConfig(**wide), dict(integrator_impl="reference"),
              dict(integrator_impl="triton"), (4, 1024))]
    if smoke:
        cases = [(name, dataclasses.replace(cfg, n_layer=1, d_model=32, n_head=2, **({"n_neurons": 4} if cfg.arch == "inn"
                                                                              else {"feedforward_dim": 0})),
                  off, on, (1, 8)) for name, cfg, off, on, _ in cases]
    return cases


def training_rows(device, repeats: int, smoke: bool, profile: bool):
    """One AdamW step of each model, without and with the kernels; with `profile`, then the ops that
    took the most device time in one step with the kernels (torch.profiler)."""
    cases = training_cases(smoke)
    print(f"\n{'training step':28} {'without ms':>11} {'with ms':>9} {'speed-up':>9}")
    profiles = []
    for name, cfg, off, on, shape in cases:
        times = []
        for switches in (off, on):
            torch.manual_seed(0)
            model = (INN if cfg.arch == "inn" else INLModel)(dataclasses.replace(cfg, **switches)).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            ids = torch.randint(0, cfg.vocab_size, shape, device=device)

            def step():
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                    logits = model(ids)
                torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten()).backward()
                opt.step()

            times.append(best_time(step, device, repeats))
        print(f"{name:28} {1e3 * times[0]:11.2f} {1e3 * times[1]:9.2f} {times[0] / times[1]:8.2f}x")
        if profile:  # the model with the kernels is still `step`'s
            activities = [torch.profiler.ProfilerActivity.CPU]
            activities += [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else []
            with torch.profiler.profile(activities=activities) as prof:
                step()
                sync(device)
            order = "cuda_time_total" if device == "cuda" else "cpu_time_total"
            profiles.append(f"\n{name}, one step with the kernels:\n"
                            + prof.key_averages().table(sort_by=order, row_limit=12, max_name_column_width=50))
    print("".join(profiles), end="")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU through Triton's interpreter, to check the script")
    ap.add_argument("--repeats", type=int, default=10, help="timed repeats per row (best is reported)")
    ap.add_argument("--profile", action="store_true", help="after the training rows, each step's costliest ops")
    ap.add_argument("--sections", default="ops,training", help="comma-separated: ops (per-op rows), training (step rows)")
    ap.add_argument("--impls", default="eager,compiled,triton,mamba-ssm,causal-conv1d", help="comma-separated impls of the op rows")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated ops of the op rows")
    args = ap.parse_args(argv)
    choices = {"sections": ("ops", "training"), "impls": ("eager", "compiled", "triton", "mamba-ssm", "causal-conv1d"),
               "ops": tuple(OPS)}
    for arg, allowed in choices.items():
        if not set(getattr(args, arg).split(",")) <= set(allowed):
            ap.error(f"--{arg} {getattr(args, arg)!r}: comma-separated names from {','.join(allowed)}")
    sections, impls = set(args.sections.split(",")), set(args.impls.split(","))
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        print("no CUDA device: every row not run (see BENCHMARKS.md); --smoke checks the script on CPU")
        return
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke: times meaningless)"
    peak_tbs = table_rates(name).get("hbm")  # the datasheet HBM bandwidth beside the peaks
    print(f"device: {name}; datasheet peak {peak_tbs} TB/s, {table_peak_tflops(name, 'fp32')} fp32 TFLOP/s")
    if device == "cuda":
        copy_tbs, matmul_tflops = achievable_rates()
        print(f"measured here: device copy {copy_tbs:.2f} TB/s (read + write), fp32 matmul without TF32 "
              f"{matmul_tflops:.1f} TFLOP/s; the % columns are of the datasheet peaks")
    repeats = 1 if args.smoke else args.repeats
    if "ops" in sections:
        ops = [OPS[op](device, args.smoke) for op in args.ops.split(",")]
        op_rows(ops, impls, device, repeats, args.smoke, peak_tbs, table_peak_tflops(name, "fp32"))
    if "training" in sections:
        training_rows(device, repeats, args.smoke, args.profile)


if __name__ == "__main__":
    main()
