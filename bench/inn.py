"""INN benchmark: one table, every comparison measured side by side in this run.

    .venv/bin/python bench/inn.py [--threads N] [--skip-memory] [--allocator jemalloc|system]

Every section runs under the malloc CPU training gets (launch/allocator.py: jemalloc when found),
the Transformer and the baselines included; `--allocator system` measures glibc's.

(1) Achieved matmul FLOP/s of one AdamW training step, INN (configs/inn_text8.yaml as shipped,
    `checkpoint_layers` included) over a parameter-matched Transformer (d 256, 6 layers, FF 1024),
    at batch 8 x 256 and 16 x 256. Useful FLOPs are counted by FlopCounterMode (matmul-class ops:
    mm, bmm, addmm, convolutions, attention) on the same model with checkpointing off, so the
    recomputation checkpointing adds is not counted as work; the step is timed as shipped. The
    Transformer runs near this CPU's GEMM rate: its GFLOP/s is printed as the achievable rate. Each
    sample is the seconds per step over a window of >= 10 s in a fresh process holding one model (the
    INN's one step, ~15 of the Transformer's: the same kind of sample for both, where "fastest single
    step" credited the short-stepped Transformer with its luckiest of ~30); the two models take turns
    for three rounds and each one's fastest sample counts.
(2) INN training tokens/s against two re-statements of the authors' model (one Mamba per layer
    shared by all neurons, torch.nn.MultiheadAttention over neurons, mean pooling, tied head):
    (a) as published: the reference scan materialising the [B*N, d_inner, T, S] discretised
    tensors before its loop; (b) the headline: a plain, efficient sequential implementation,
    an explicit loop over time keeping only the running state [B*N, d_inner, S].
(3) Routing layer cost per neuron (forward + backward of the router alone, the only part
    whose cost depends on N) at N = 32 ... 4096 for dense, topk (k=8), hierarchical (G=32).
(4) Chunked selective scan vs the sequential reference at T = 2048, forward + backward.
(5) Peak RSS of one training step of configs/inn_text8.yaml as shipped at batch 16 x 256,
    measured in a fresh child process.

Check that it runs at a tiny size (figures meaningless):
    .venv/bin/python bench/inn.py --batches 1 --seq 16 --authors-seq 8 --sections 1,2
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

from neurograph.kernels.selective_scan import (selective_scan_chunked, selective_scan_cpp, selective_scan_materialised,
                                               selective_scan_ref)
from neurograph.launch.allocator import ALLOCATORS, with_allocator
from neurograph.model import build_model, parse_model_config
from neurograph.model.neuron_router import build_router

ROOT = Path(__file__).resolve().parent.parent

VOCAB, SEQ = 27, 256
PAPER = dict(arch="inn", vocab_size=VOCAB, n_neurons=32, d_model=256, d_state=16, n_layer=6, n_head=4, dropout=0.1)
SHIPPED = ROOT / "configs" / "inn_text8.yaml"


def shipped_inn(**overrides) -> nn.Module:
    """configs/inn_text8.yaml's model as shipped (with `overrides`)."""
    section = yaml.safe_load(SHIPPED.read_text())["model"]
    return build_model(parse_model_config({**section, **overrides}))


def training_step(model, batch: int, seq: int):
    """A function running one optimizer step (forward, backward, AdamW) of `model` on a fixed batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, VOCAB, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    model.train()

    def step():
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def train_step_time(model, batch: int, seq: int, steps: int = 1) -> float:
    """Seconds per optimizer step: one warm-up step, then the fastest of `steps` (the machine is
    shared, and the same estimator is used for every model)."""
    step = training_step(model, batch, seq)
    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return min(times)


def window_step_time(model, batch: int, seq: int, window: float) -> tuple[float, float]:
    """(mean, fastest) seconds per optimizer step over consecutive steps spanning at least `window`
    seconds (after one warm-up step). The mean is one sample per call whatever a model's step time: a
    model of short steps is not credited with its luckiest step against one whose step fills the window."""
    step = training_step(model, batch, seq)
    step()
    times = []
    while not times or sum(times) < window:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return sum(times) / len(times), min(times)


def step_flops(model, batch: int, seq: int) -> int:
    """Matmul-class FLOPs of one training step (forward + backward) counted by FlopCounterMode."""
    x = torch.randint(0, VOCAB, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    model.train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# -- the authors' model, re-stated ---------------------------------------------------------------
# (a) the scan as the authors run it (discretised A and B*u built for the whole sequence before
# the loop over T); (b) the same recurrence keeping only the running state [B, d, S].
materialised_scan = functools.partial(selective_scan_materialised, delta_softplus=True)
running_state_scan = functools.partial(selective_scan_ref, delta_softplus=True)


class AuthorsMamba(nn.Module):
    """mamba-ssm's Mamba (expand 2, conv 4, dt rank ceil(D/16)) with a pluggable pure-PyTorch scan."""

    def __init__(self, d: int, s: int = 16, k: int = 4, scan=materialised_scan):
        super().__init__()
        self.scan = scan
        di, self.r, self.s = 2 * d, math.ceil(d / 16), s
        self.in_proj = nn.Linear(d, 2 * di, bias=False)
        self.conv = nn.Conv1d(di, di, k, groups=di, padding=k - 1)
        self.x_proj = nn.Linear(di, self.r + 2 * s, bias=False)
        self.dt_proj = nn.Linear(self.r, di)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, s + 1.0)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d, bias=False)

    def forward(self, x):  # [B', T, D]
        t = x.shape[1]
        xi, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # [B', di, T]
        xi = F.silu(self.conv(xi)[..., :t])
        dt, B, C = self.x_proj(xi.transpose(1, 2)).split([self.r, self.s, self.s], dim=-1)
        dt = (dt @ self.dt_proj.weight.T).transpose(1, 2)
        y = self.scan(xi, dt, -torch.exp(self.A_log), B.transpose(1, 2), C.transpose(1, 2), self.D, z,
                      self.dt_proj.bias)
        return self.out_proj(y.transpose(1, 2))


class AuthorsINN(nn.Module):
    """The authors' INN: identical neurons, per layer h += Mamba(LN(h)) (one Mamba shared by all
    neurons) and h += MultiheadAttention over the neurons of each token; mean pool, tied head."""

    def __init__(self, n=32, d=256, layers=6, heads=4, dropout=0.1, s=16, vocab=VOCAB, scan=materialised_scan):
        super().__init__()
        self.n = n
        self.embed = nn.Embedding(vocab, d)
        self.ln1 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.mamba = nn.ModuleList(AuthorsMamba(d, s, scan=scan) for _ in range(layers))
        self.ln2 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.attn = nn.ModuleList(nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True) for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids):
        b, t = ids.shape
        h = self.embed(ids).unsqueeze(1).repeat(1, self.n, 1, 1)  # [B, N, T, D], identical neurons
        d = h.shape[-1]
        for ln1, mamba, ln2, attn in zip(self.ln1, self.mamba, self.ln2, self.attn):
            h = h + self.drop(mamba(ln1(h).view(b * self.n, t, d)).view(b, self.n, t, d))
            m = ln2(h).permute(0, 2, 1, 3).reshape(b * t, self.n, d)
            a, _ = attn(m, m, m, need_weights=False)
            h = h + self.drop(a.view(b, t, self.n, d).permute(0, 2, 1, 3))
        return self.ln_f(h.mean(1)) @ self.embed.weight.T


# -- sections ----------------------------------------------------------------------------------
def flops_model(name: str, seq: int, checkpointing: bool = True) -> nn.Module:
    """(1)'s models: the parameter-matched Transformer, or the shipped INN (`checkpointing` off: the
    same model without its recomputation, for counting useful FLOPs)."""
    torch.manual_seed(0)
    if name == "INN":
        return shipped_inn() if checkpointing else shipped_inn(checkpoint_layers=False)
    return build_model(dict(arch="transformer", vocab_size=VOCAB, d_model=256, n_layer=6, n_head=4, d_ff=1024,
                            max_seq_len=max(seq, 16), dropout=0.1))


def timing_child(name: str, batch: int, seq: int):
    """Run in a child process: print (1)'s model `name`'s seconds per step over a window of >= 10 s
    (mean and fastest step)."""
    mean, fastest = window_step_time(flops_model(name, seq), batch, seq, window=10.0)
    print(json.dumps(dict(seconds=mean, fastest=fastest)))


def run_child(flags: list[str], threads: Optional[int]) -> dict:
    """This script in a fresh process with `flags`; the JSON line it prints last."""
    cmd = [sys.executable, __file__, *flags] + (["--threads", str(threads)] if threads else [])
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def section_flops(batch: int, seq: int, threads: Optional[int], rounds: int = 3):
    """(1) rows (name, params, tokens/s, useful matmul FLOP/s, the same at the fastest single step) for the
    Transformer and the shipped INN.
    Each step is timed in a fresh process holding that model alone, as a training process does (in one
    process, each model ran on the allocator's pages as the other left them). A process gives one
    sample: its seconds per step over a window of >= 10 s (the INN's one step fills it; the Transformer
    runs ~15). The two models take turns for `rounds` rounds and each one's fastest sample counts, so
    a slow spell of the machine does not fall on one model only."""
    names = ("Transformer", "INN")
    # Counted on one sequence and scaled: every op is per sequence, so the count is exactly linear in
    # the batch, and the model without recomputation need not hold a whole batch's activations.
    counted = {name: flops_model(name, seq, checkpointing=False) for name in names}
    flops = {name: batch * step_flops(model, 1, seq) for name, model in counted.items()}
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in counted.items()}
    best, fastest = dict.fromkeys(names, math.inf), dict.fromkeys(names, math.inf)
    for _ in range(rounds):
        for name in names:
            sample = run_child(["--timing-child", name, str(batch), str(seq)], threads)
            best[name] = min(best[name], sample["seconds"])
            fastest[name] = min(fastest[name], sample["fastest"])
    return [(name, params[name], batch * seq / best[name], flops[name] / best[name], flops[name] / fastest[name])
            for name in names]


def section_authors(batch: int, seq: int):
    """(2) training tokens/s of ours (paper configuration) and of the authors' model (a), (b)."""
    out = {}
    for name, make in (("ours", lambda: build_model(PAPER)),
                       ("(b) plain sequential", lambda: AuthorsINN(scan=running_state_scan)),
                       ("(a) as published", lambda: AuthorsINN(scan=materialised_scan))):
        torch.manual_seed(0)
        out[name] = batch * seq / train_step_time(make(), batch, seq, steps=1 if name.startswith("(a)") else 3)
    return out


def section_routing(ns, m_rows: int = 4, d: int = 256, heads: int = 4):
    out = {}
    for kind in ("dense", "topk", "hierarchical"):
        for n in ns:
            torch.manual_seed(0)
            router = build_router(kind, d, heads, n, 0.0, topk=8, sketch_dim=32, group_size=32)
            x = torch.randn(m_rows, n, d, requires_grad=True)
            router(x).square().mean().backward()  # warm-up
            best = math.inf
            for _ in range(7 if n <= 1024 else 3):  # fastest repetition: the machine is shared
                t = time.perf_counter()
                router(x).square().mean().backward()
                best = min(best, time.perf_counter() - t)
            out[(kind, n)] = best / (m_rows * n) * 1e6  # us per neuron-token
    return out


def section_scan(b=2, d=256, s=16, t=2048, chunk=None):
    """Times forward + backward of each fp32 scan; errors against the sequential reference in
    fp64 (at |y| ~ 50 an fp32 ulp is ~4e-6, so two correct fp32 scans can differ by 1e-5)."""
    g = torch.Generator().manual_seed(0)
    inputs = dict(u=torch.randn(b, d, t, generator=g), delta=torch.randn(b, d, t, generator=g) * 0.5 - 1.0,
                  A=-torch.exp(torch.log(torch.arange(1, s + 1.0)).repeat(d, 1)), B=torch.randn(b, s, t, generator=g),
                  C=torch.randn(b, s, t, generator=g), D=torch.ones(d), z=torch.randn(b, d, t, generator=g),
                  delta_bias=torch.zeros(d))

    def run(fn, dtype=torch.float32, **kw):
        x = {k: v.to(dtype, copy=True).requires_grad_() for k, v in inputs.items()}
        tm = time.perf_counter()
        y = fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], delta_bias=x["delta_bias"],
               delta_softplus=True, **kw)
        y.square().sum().backward()
        return time.perf_counter() - tm, y.detach().double(), [v.grad.double() for v in x.values()]

    _, y_exact, g_exact = run(selective_scan_ref, torch.float64)
    res = {}
    for name, fn, kw in (("sequential", selective_scan_ref, {}), ("chunked", selective_scan_chunked, dict(chunk_size=chunk)),
                         ("cpp", selective_scan_cpp, {})):
        runs = [run(fn, **kw) for _ in range(3 if name != "sequential" else 2)]  # the first pays for allocations
        _, y, grads = runs[-1]
        res[name] = dict(time=min(r[0] for r in runs), y=y, err_y=(y - y_exact).abs().max().item(),
                         err_g=max(((a - b_).abs().max() / b_.abs().max().clamp_min(1)).item()
                                   for a, b_ in zip(grads, g_exact)))
    seq = res["sequential"]
    return {name: (res[name]["time"], seq["time"], res[name]["err_y"], res[name]["err_g"], seq["err_y"],
                   (res[name]["y"] - seq["y"]).abs().max().item()) for name in ("chunked", "cpp")}


def peak_rss_gb() -> float:
    """Peak resident memory of this process since its start (VmHWM, reset on entry to the child:
    ru_maxrss would also count the parent's pages the child held between fork and exec)."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1e6 * 1.024


def memory_step_child():
    """Run in a child process: one training step at the paper's shape; print peak RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak := current RSS (this interpreter's own)
    torch.manual_seed(0)
    model = shipped_inn()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, VOCAB, (16, SEQ + 1))
    t = time.perf_counter()
    loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    opt.step()
    elapsed = time.perf_counter() - t
    print(json.dumps(dict(peak_gb=peak_rss_gb(), seconds=elapsed)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--skip-memory", action="store_true", help="skip (5), the paper-shape step (minutes on 2 cores)")
    ap.add_argument("--batches", default="8,16", help="comma-separated batches for (1)")
    ap.add_argument("--seq", type=int, default=SEQ, help="sequence length for (1)")
    ap.add_argument("--authors-batch", type=int, default=1, help="batch for (2)")
    ap.add_argument("--authors-seq", type=int, default=128, help="sequence length for (2): (a) is memory-bound")
    ap.add_argument("--sections", default="1,2,3,4,5", help="comma-separated subset of 1-5")
    ap.add_argument("--allocator", choices=ALLOCATORS, default="jemalloc",
                    help="malloc of this run: the one `neurograph train` gives CPU workers (trainer.cpu_allocator)")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--timing-child", nargs=3, metavar=("MODEL", "BATCH", "SEQ"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    env = with_allocator(dict(os.environ), args.allocator)
    if env.get("LD_PRELOAD") != os.environ.get("LD_PRELOAD"):  # loaded at exec only: start again with it
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_step_child()
        return
    if args.timing_child:
        name, batch, seq = args.timing_child
        timing_child(name, int(batch), int(seq))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}, "
          f"malloc: {os.environ.get('LD_PRELOAD') or 'the C library'}", flush=True)

    rows = []  # (measure, INN, comparison, ratio, goal, met)

    def add(measure, ours, other, ratio, goal, met):
        rows.append((measure, ours, other, ratio, goal, "yes" if met else "NO"))
        print(" | ".join(rows[-1]), flush=True)

    sections = set(args.sections.split(","))
    if "1" in sections:
        for batch in (int(b) for b in args.batches.split(",")):
            (_, p_tf, tok_tf, fl_tf, top_tf), (_, p_inn, tok_inn, fl_inn, top_inn) = section_flops(
                batch, args.seq, args.threads)
            add(f"(1) achieved matmul GFLOP/s (FlopCounterMode, recomputation not counted), inn_text8.yaml as shipped, "
                f"batch {batch}x{args.seq} (INN {p_inn/1e6:.2f}M / Transformer {p_tf/1e6:.2f}M params; "
                f"achievable here ~ Transformer's {fl_tf/1e9:.1f})", f"{fl_inn/1e9:.1f}", f"{fl_tf/1e9:.1f}",
                f"{fl_inn/fl_tf:.2f}", ">= 0.75", fl_inn / fl_tf >= 0.75)
            add(f"(1) the same at each model's fastest single step (the estimator before 2026-11-30)",
                f"{top_inn/1e9:.1f}", f"{top_tf/1e9:.1f}", f"{top_inn/top_tf:.2f}", "(report)", True)
            add(f"(1) training tokens/s, same shapes", f"{tok_inn:.1f}", f"{tok_tf:.1f}", f"{tok_inn/tok_tf:.3f}",
                "(report)", True)

    if "2" in sections:
        a = section_authors(args.authors_batch, args.authors_seq)
        shape = f"batch {args.authors_batch}x{args.authors_seq}"
        add(f"(2) HEADLINE training tokens/s vs the authors' model, (b) plain sequential implementation, {shape}",
            f"{a['ours']:.1f}", f"{a['(b) plain sequential']:.1f}", f"{a['ours']/a['(b) plain sequential']:.1f}x",
            "(report)", True)
        add(f"(2) training tokens/s vs the authors' code path as published, (a) materialised scan history, {shape}",
            f"{a['ours']:.1f}", f"{a['(a) as published']:.1f}", f"{a['ours']/a['(a) as published']:.1f}x", "(report)", True)

    ns = (32, 128, 512, 1024, 4096)
    r = section_routing(ns) if "3" in sections else {}
    for kind in ("dense", "topk", "hierarchical") if r else ():
        costs = " ".join(f"N={n}:{r[(kind, n)]:.2f}" for n in ns)
        ratio = r[(kind, 4096)] / r[(kind, 32)]
        goal = "(report)" if kind == "dense" else "<= 1.5x"
        add(f"(3) {kind} router us per neuron-token [{costs}]", f"{r[(kind, 4096)]:.2f}", f"{r[(kind, 32)]:.2f}",
            f"{ratio:.2f}x", goal, kind == "dense" or ratio <= 1.5)

    for name, (t_fast, t_seq, err_y, err_g, err_seq, diff) in (section_scan().items() if "4" in sections else ()):
        add(f"(4) scan fwd+bwd s at T=2048, {name} vs sequential (fp32); max |dy| vs fp64 (sequential fp32: "
            f"{err_seq:.1e}; {name} vs sequential fp32: {diff:.1e}); max rel |dgrad| vs fp64",
            f"{t_fast:.2f}", f"{t_seq:.2f}", f"{t_seq/t_fast:.1f}x; {err_y:.1e}; {err_g:.1e}", ">= 5x, err <= 1e-5",
            t_seq / t_fast >= 5 and err_y <= 1e-5)

    if "5" in sections and not args.skip_memory:
        mem = run_child(["--memory-child"], args.threads)
        add(f"(5) peak RSS GB, one training step 16x256, inn_text8.yaml as shipped ({mem['seconds']:.0f} s, "
            f"{16 * SEQ / mem['seconds']:.1f} tokens/s)", f"{mem['peak_gb']:.2f}", "-", "-", "<= 8 GB", mem["peak_gb"] <= 8)

    print()
    header = ("measure", "INN / ours", "comparison", "ratio", "goal", "met")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
