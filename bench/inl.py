"""INL benchmarks, one table in one run (CPU):

1. INL block (K=5, integrator in place of the FFN) forward+backward time over a same-width
   GELU-FFN Transformer block (goal <= 1.5); the INL block that also keeps an FFN is shown too.
2. Generation of 256 tokens with the KV cache vs re-running the whole sequence (goal >= 5x).
3. Inference time saved by per-token adaptive stopping at equal outputs (goal >= 30%), on a tiny
   char-level INL trained here for a few seconds on Shakespeare (with the convergence loss), with
   SPEC's min_iterations 3 of K=5: at most 40% of the integrator work can be skipped. Full and
   adaptive forwards alternate, so drift on the machine hits both alike.

Usage: .venv/bin/python bench/inl.py [--threads N] [--quick]
"""
from __future__ import annotations

import argparse
import lzma
import time
from pathlib import Path

import torch
import torch.nn.functional as F


from neurograph.model import build_model
from neurograph.model.generation import generate
from neurograph.model.inl import INLBlock, INLConfig, IntegratorController
from neurograph.model.transformer import TransformerBlock, TransformerConfig

MIN_ITERATIONS = 3  # SPEC section 3
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare.txt.xz"


def best_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_block(d: int, batch: int, seq: int, repeats: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    tcfg = TransformerConfig(d_model=d, n_head=d // 64, d_ff=4 * d, max_seq_len=seq, positions="sinusoidal")
    tblock = TransformerBlock(tcfg, None)
    results = []
    for ffn in (0, 4 * d):
        icfg = INLConfig(d_model=d, n_head=d // 64, n_layer=1, num_iterations=5, feedforward_dim=ffn, max_seq_len=seq,
                         hierarchical_equilibrium=True, group_size=64, excitation_sparsity=0.1)
        results.append((INLBlock(icfg, 0, None), IntegratorController(d, 64, 1)))
    x = torch.randn(batch, seq, d)

    def step(block, ctrl=None):
        def run():
            xx = x.clone().requires_grad_(True)
            out = block(xx) if ctrl is None else block(xx, None, ctrl)
            out.sum().backward()
        return run

    t_ref = best_time(step(tblock), repeats)
    t_inl = best_time(step(*results[0]), repeats)
    t_inl_ffn = best_time(step(*results[1]), repeats)
    return t_ref, t_inl, t_inl_ffn


def bench_generation(new_tokens: int) -> tuple[float, float, bool]:
    torch.manual_seed(0)
    model = build_model(dict(arch="inl", vocab_size=512, d_model=384, n_layer=6, n_head=6, max_seq_len=320,
                             num_iterations=5, feedforward_dim=0, positions="rope")).eval()
    prompt = torch.randint(0, 512, (1, 16))
    t0 = time.perf_counter()
    cached = generate(model, prompt, new_tokens, use_cache=True)
    t_cache = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = generate(model, prompt, new_tokens, use_cache=False)
    t_full = time.perf_counter() - t0
    return t_cache, t_full, torch.equal(cached, full)


def train_tiny(steps: int, min_iterations: int):
    with lzma.open(SHAKESPEARE, "rt", encoding="utf-8") as f:
        text = f.read(200_000)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text])
    torch.manual_seed(0)
    model = build_model(dict(arch="inl", vocab_size=len(chars), d_model=64, n_layer=2, n_head=4, max_seq_len=64,
                             num_iterations=5, feedforward_dim=0, min_iterations=min_iterations,
                             convergence_weight=10.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ix = torch.randint(0, len(data) - 33, (16,), generator=gen)
        x = torch.stack([data[i : i + 32] for i in ix])
        y = torch.stack([data[i + 1 : i + 33] for i in ix])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten()) + model.aux_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    held_out = torch.stack([data[i : i + 64] for i in range(150_000, 150_000 + 64 * 128, 64)])  # 128 x 64 tokens
    return model.eval(), held_out


def bench_adaptive(steps: int, threshold: float, repeats: int, min_iterations: int):
    model, ids = train_tiny(steps, min_iterations)
    # Integrator branches timed by hooks inside the same forwards that are timed whole.
    spent, starts = [0.0], {}
    hooks = [h for it in model.integrators() for h in (
        it.register_forward_pre_hook(lambda m, a: starts.__setitem__(id(m), time.perf_counter())),
        it.register_forward_hook(lambda m, a, o: spent.__setitem__(0, spent[0] + time.perf_counter() - starts[id(m)])))]
    best = {False: (float("inf"), float("inf")), True: (float("inf"), float("inf"))}  # (forward, integrators)
    outputs = {}
    with torch.no_grad():
        for rep in range(repeats + 2):  # alternate the two modes so drift on the machine hits both alike
            for adaptive in (False, True):
                model.set_adaptive_stopping(adaptive, threshold=threshold, min_iterations=min_iterations)
                spent[0] = 0.0
                t0 = time.perf_counter()
                outputs[adaptive] = model(ids)
                elapsed = time.perf_counter() - t0
                if rep >= 2:  # two warm-up rounds
                    best[adaptive] = (min(best[adaptive][0], elapsed), min(best[adaptive][1], spent[0]))
        iters = model.iterations_used().float().mean().item()
    for h in hooks:
        h.remove()
    model.set_adaptive_stopping(False)
    full, fast = outputs[False], outputs[True]
    diff = (fast - full).abs().max().item()
    agree = (fast.argmax(-1) == full.argmax(-1)).float().mean().item()
    return best[False][0], best[True][0], iters, diff, agree, best[False][1], best[True][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    ap.add_argument("--threshold", type=float, default=0.3, help="adaptive stopping threshold (L2 of the update)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d, batch, seq, reps = (256, 4, 128, 3) if args.quick else (512, 8, 256, 5)
    new_tokens = 64 if args.quick else 256

    t_ref, t_inl, t_inl_ffn = bench_block(d, batch, seq, reps)
    t_cache, t_nocache, same = bench_generation(new_tokens)
    t_full, t_fast, iters, diff, agree, i_full, i_fast = bench_adaptive(60 if args.quick else 150, args.threshold,
                                                                        reps * 4, MIN_ITERATIONS)

    rows = [
        ("1 INL block (K=5, no FFN) fwd+bwd / GELU-FFN block", f"{t_inl * 1e3:.1f} / {t_ref * 1e3:.1f} ms",
         f"{t_inl / t_ref:.2f}x", "<= 1.5", t_inl / t_ref <= 1.5),
        ("1b INL block (K=5) + FFN fwd+bwd / GELU-FFN block", f"{t_inl_ffn * 1e3:.1f} / {t_ref * 1e3:.1f} ms",
         f"{t_inl_ffn / t_ref:.2f}x", "(info)", None),
        (f"2 generate {new_tokens} tokens: no cache / KV cache", f"{t_nocache:.2f} / {t_cache:.2f} s",
         f"{t_nocache / t_cache:.1f}x", ">= 5x", t_nocache / t_cache >= 5 and same),
        ("3 adaptive stopping: forward time saved", f"{t_full * 1e3:.1f} -> {t_fast * 1e3:.1f} ms",
         f"{1 - t_fast / t_full:.0%}", ">= 30%", 1 - t_fast / t_full >= 0.3),
        ("3b adaptive stopping: integrator time saved", f"{i_full * 1e3:.1f} -> {i_fast * 1e3:.1f} ms",
         f"{1 - i_fast / i_full:.0%}", "(info)", None),
        ("3c mean iterations / max |dlogit| / argmax agree", f"{iters:.2f} of 5 / {diff:.3f}", f"{agree:.1%}",
         "equal outputs", None),
    ]
    print(f"\nINL benchmarks (CPU, {args.threads} threads; block D={d}, B={batch}, T={seq}; "
          f"adaptive threshold {args.threshold}; greedy outputs with/without cache equal: {same})")
    w = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(w)} | {'times':>22} | {'result':>8} | {'goal':>13} | met")
    print("-" * (w + 60))
    for name, times, result, goal, ok in rows:
        met = "-" if ok is None else ("yes" if ok else "NO")
        print(f"{name.ljust(w)} | {times:>22} | {result:>8} | {goal:>13} | {met}")


if __name__ == "__main__":
    main()
