"""Mutation run: break the math on purpose and check that a test notices.

    .venv/bin/python bench/mutation.py [--only NAME ...] [--markdown docs/mutation.md]

Each mutation replaces one exact snippet of one file (return zeros, drop a term, swap an index,
skip the gate) in a scratch copy of the repository, runs the fast tests of that model family or
kernel there (`pytest -x`, slow tests included where the family's kernel is only tested there),
and records the first failing test. A mutation that no test catches is printed as "NOT CAUGHT"
and makes the script exit 1. The working tree is never modified; the C++ scan is rebuilt in a
scratch torch-extensions directory. Not part of `make test` (minutes); tests/mutation checks
that every snippet below still occurs exactly once in its file.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TESTS = {
    "transformer": ["tests/model/test_transformer.py"],
    "inn": ["tests/model/test_inn.py", "tests/model/test_inn_configs.py"],
    "inl": ["tests/model/test_inl.py", "tests/model/test_inl_adaptive.py"],
    "hf_inl": ["tests/model/test_inl_hf.py"],
    "mamba_stack": ["tests/model/test_mamba.py"],
    "lstm": ["tests/model/test_lstm.py"],
    "scan": ["tests/kernels/test_scan_fidelity.py", "tests/kernels/test_selective_scan.py"],
    "integrator": ["tests/kernels/test_integrator.py", "tests/model/test_inl.py"],
    "cpu_kernels": ["tests/kernels/test_cpu_kernels.py"],
}


@dataclass(frozen=True)
class Mutation:
    name: str
    family: str  # a key of TESTS
    kind: str    # return zeros | drop a term | swap an index | skip the gate | skip the mask | skip a check
    path: str
    old: str
    new: str


MUTATIONS = [
    Mutation("transformer: MLP branch dropped", "transformer", "drop a term", "model/transformer.py",
             "return x + self.mlp(self.ln_mlp(x))", "return x"),
    Mutation("attention: not causal", "transformer", "skip the mask", "model/layers.py",
             "dropout_p=dropout_p, is_causal=True)", "dropout_p=dropout_p, is_causal=False)"),
    Mutation("attention: q and k swapped", "transformer", "swap an index", "model/layers.py",
             "q, k, v = self.qkv(x).split(d, dim=2)", "k, q, v = self.qkv(x).split(d, dim=2)"),
    Mutation("inn: router residual dropped", "inn", "drop a term", "model/inn.py",
             "            return h + r.view(b, t, n, d).transpose(1, 2)", "            return r.view(b, t, n, d).transpose(1, 2)"),
    Mutation("inn: head reads neuron 0, not the mean", "inn", "swap an index", "model/inn.py",
             "return self.ln_f(h.mean(1)) @ self.embed.weight.T", "return self.ln_f(h[:, 0]) @ self.embed.weight.T"),
    Mutation("inn: dense router returns zeros", "inn", "return zeros", "model/neuron_router.py",
             "y = neuron_attention(*self.heads(m), self.impl,", "y = 0 * neuron_attention(*self.heads(m), self.impl,"),
    Mutation("mamba: gate skipped in the full-sequence path", "mamba_stack", "skip the gate", "model/mamba.py",
             "flat(C), D, flat(z), delta_bias=dt_bias", "flat(C), D, None, delta_bias=dt_bias"),
    Mutation("mamba: conv bias not passed", "mamba_stack", "drop a term", "model/mamba.py",
             "causal_conv1d_silu(xi, self.conv_weight, self.conv_bias,", "causal_conv1d_silu(xi, self.conv_weight, None,"),
    Mutation("mamba_stack: residual dropped", "mamba_stack", "drop a term", "model/mamba_stack.py",
             "            x = x + self.drop(block(norm(x)))", "            x = self.drop(block(norm(x)))"),
    Mutation("lstm: logits zero", "lstm", "return zeros", "model/lstm.py",
             "return self.drop(y) @ self.embed.weight.T", "return 0 * self.drop(y) @ self.embed.weight.T"),
    Mutation("lstm: input embedding replaced by zeros", "lstm", "return zeros", "model/lstm.py",
             "y, _ = self.lstm(self.drop(self.embed(input_ids)))", "y, _ = self.lstm(0 * self.drop(self.embed(input_ids)))"),
    Mutation("inl: group offsets ignored", "inl", "drop a term", "model/inl.py",
             "return (self.mu_global + offsets).repeat_interleave(self.group_size)",
             "return (self.mu_global + 0 * offsets).repeat_interleave(self.group_size)"),
    Mutation("inl: no excitation at evaluation", "inl", "return zeros", "model/inl.py",
             "        return self.excitation_sparsity * wave", "        return None"),
    Mutation("inl: energy measured against mu", "inl", "drop a term", "model/inl.py",
             "z_star = mu + (1 - alpha) * v_target / beta", "z_star = mu"),
    Mutation("inl: integrator branch skipped", "inl", "return zeros", "model/inl.py",
             "x = x + self.drop(self.integrator(self.ln_int(x), a, controller))", "x = x"),
    Mutation("inl: controller ignores v", "inl", "drop a term", "model/inl.py",
             "            pre = pre + F.linear(v, self.fc_in.weight[:, 2 * d :])", "            pass"),
    Mutation("inl: redundant per-channel global mu", "inl", "drop a term", "model/inl.py",
             "self.mu_global = nn.Parameter(torch.zeros(1 if self.group_size else d))",
             "self.mu_global = nn.Parameter(torch.zeros(d))"),
    Mutation("inl: old checkpoint accepted unconverted", "inl", "skip a check", "model/inl.py",
             "    if spread > 1e-6 * (1.0 + mu.abs().max().item()):", "    if False:"),
    Mutation("hf_inl: feed-forward returns zeros", "hf_inl", "return zeros", "model/hf_integrator.py",
             "return self.integrator(hidden_states, hidden_states, self._controller[0])",
             "return 0 * hidden_states"),
    Mutation("integrator: restoring force dropped", "integrator", "drop a term", "kernels/integrator.py",
             "v_new = torch.addcmul(v_new, beta, z - mu, value=-1.0)", "v_new = v_new"),
    Mutation("integrator: alpha and gate swapped", "integrator", "swap an index", "kernels/integrator.py",
             "torch.sigmoid(raw[..., 0, :]), F.softplus(raw[..., 1, :]), torch.sigmoid(raw[..., 2, :])",
             "torch.sigmoid(raw[..., 2, :]), F.softplus(raw[..., 1, :]), torch.sigmoid(raw[..., 0, :])"),
    Mutation("integrator: gate skipped", "integrator", "skip the gate", "kernels/integrator.py",
             "z_new = torch.addcmul(z, gate, v_new, value=dt)", "z_new = z + dt * v_new"),
    Mutation("scan (reference, chunked): gate skipped", "scan", "skip the gate", "kernels/selective_scan.py",
             "        y = y * F.silu(z)", "        y = y"),
    Mutation("scan (reference): state update drops the input", "scan", "drop a term", "kernels/selective_scan.py",
             "h = decay * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]", "h = decay * h"),
    Mutation("scan (chunked): dA dropped in backward", "scan", "return zeros", "kernels/selective_scan.py",
             "        gA_acc.addcmul_(q, delta[l, ..., None])", "        pass"),
    Mutation("scan (chunked): CPU's cache-sized channel tiles on CUDA", "scan", "skip a check", "kernels/selective_scan.py",
             'budget, per_channel = ((_CUDA_TILE_ELEMENTS, chunk * b * nc * s) if device.type == "cuda"',
             'budget, per_channel = ((_STEP_ELEMENTS, b * nc * s) if device.type == "cuda"'),
    Mutation("scan (chunked): last state from the first chunk", "scan", "swap an index", "kernels/selective_scan.py",
             "    return y, starts, h[:, -1]", "    return y, starts, h[:, 0]"),
    Mutation("scan (all): shape check skipped", "scan", "skip a check", "kernels/selective_scan.py",
             "        if tuple(x.shape) != expected[name]:", "        if False:"),
    Mutation("scan (all): inputs not cast to the compute dtype", "scan", "skip a check", "kernels/selective_scan.py",
             "    return [None if x is None else x.to(dtype) for x in args]", "    return list(args)"),
    Mutation("scan (cpp): size-1 channel axis keeps its stride", "scan", "skip a check", "kernels/selective_scan.py",
             "        x = x.as_strided(x.shape, (*x.stride()[:-1], 1))", "        pass"),
    Mutation("conv (reference): bias dropped", "cpu_kernels", "drop a term", "kernels/causal_conv1d.py",
             "        pre += bias[:, None] if bias.dim() == 2 else bias", "        pass"),
    Mutation("dropout: backward draws another mask", "cpu_kernels", "swap an index", "kernels/dropout.py",
             "apply(grad.contiguous(), ctx.seed, ctx.p)", "apply(grad.contiguous(), ctx.seed + 1, ctx.p)"),
    Mutation("neuron attention: dropout on the output, not the weights", "cpu_kernels", "swap an index",
             "kernels/neuron_attention.py", "return (apply_dropout(w, dropout) @ v).transpose(1, 2)",
             "return apply_dropout(w @ v, dropout).transpose(1, 2)"),
    Mutation("top-k neuron attention: dropout skipped", "cpu_kernels", "skip the mask", "kernels/neuron_attention.py",
             "    w = apply_dropout(torch.softmax(logits, dim=2), dropout)", "    w = torch.softmax(logits, dim=2)"),
    Mutation("conv (cpp): bias gradient dropped (rebuilds the C++ conv)", "cpu_kernels", "return zeros",
             "kernels/causal_conv1d_cpu.cpp", "            gb[j] += gp[j];", "            gb[j] += T(0);"),
    Mutation("conv (cpp): input gradient misses the newest tap but one (rebuilds the C++ conv)", "cpu_kernels",
             "drop a term", "kernels/causal_conv1d_cpu.cpp", "          for (int64_t k = k0; k < s.K - 1; ++k) {",
             "          for (int64_t k = k0 + 1; k < s.K - 1; ++k) {"),
    Mutation("scan (cpp): gate skipped (rebuilds the C++ scan)", "scan", "skip the gate", "kernels/selective_scan_cpu.cpp",
             "for (int64_t j = 0; j < DB; ++j) acc[j] *= st.z[j] * sigmoid(st.z[j]);",
             "for (int64_t j = 0; j < DB; ++j) acc[j] *= T(1);"),
    Mutation("cpu math: softplus loses its max(v, 0) term (rebuilds the C++ scan)", "scan", "drop a term",
             "kernels/cpu_math.h", "return std::max(v, 0.0f) + log1p_unit(exp(-std::fabs(v)));",
             "return log1p_unit(exp(-std::fabs(v)));"),
    Mutation("cpu extension: build name blind to the shared headers", "cpu_kernels", "skip a check",
             "kernels/cpu_extension.py", "source.read_bytes() + headers)", "source.read_bytes())"),
    Mutation("scan (cpp): odd states' partial sum dropped (rebuilds the C++ scan)", "scan", "drop a term",
             "kernels/selective_scan_cpu.cpp", "y[j] += odd[j] + D[j] * u[j];", "y[j] += D[j] * u[j];"),
    Mutation("inn (recomputed memory half): out_proj weight gradient zeroed", "inn", "return zeros", "model/mamba.py",
             "out_grads = {block.out_proj.weight: g2.T @ y.reshape(-1, y.shape[-1]),",
             "out_grads = {block.out_proj.weight: torch.zeros_like(block.out_proj.weight),"),
    Mutation("inn (recomputed memory half): every backward slice starts from the first slice's states", "inn",
             "swap an index", "model/mamba.py", "starts[lo * per_index:hi * per_index], gs)",
             "starts[:(hi - lo) * per_index], gs)"),
    Mutation("inn (recomputed router half): q/k/v projections recomputed, not kept", "inn", "drop a term",
             "model/inn.py", "                return CheckpointPolicy.MUST_SAVE",
             "                return CheckpointPolicy.PREFER_RECOMPUTE"),
    Mutation("dropout (cpp): kept values not rescaled (rebuilds the C++ dropout)", "cpu_kernels", "drop a term",
             "kernels/dropout_cpu.cpp", "? x[k] * scale : T(0);", "? x[k] : T(0);"),
    Mutation("scan (cpp): backward's forward output not gated (rebuilds the C++ scan)", "inn", "skip the gate",
             "kernels/selective_scan_cpu.cpp", "yt[j] = in.z.p ? ys[j] * st.z[j] * sigmoid(st.z[j]) : ys[j];",
             "yt[j] = ys[j];"),
]


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "mlruns", "mlartifacts", "__pycache__", ".pytest_cache",
                                    "*.egg-info", "results", "build")
    shutil.copytree(ROOT, dest, ignore=ignore)


def run_mutation(m: Mutation, tree: Path, env: dict) -> tuple[str, float]:
    """Apply `m` in `tree`, run its family's tests, restore the file. Returns (caught-by, seconds)."""
    target = tree / m.path
    original = target.read_text()
    if original.count(m.old) != 1:
        raise SystemExit(f"{m.name}: snippet occurs {original.count(m.old)} times in {m.path}, expected once")
    target.write_text(original.replace(m.old, m.new))
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                               "-rf", *TESTS[m.family]], cwd=tree, env=env, capture_output=True, text=True)
    finally:
        target.write_text(original)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.MULTILINE)
    if proc.returncode == 0:
        return "NOT CAUGHT", time.perf_counter() - start
    return (failed[0] if failed else f"pytest exit {proc.returncode}"), time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="run only mutations whose name contains one of these")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="neurograph-mutation-") as tmp:
        tree = Path(tmp) / "main"
        _copy_tree(tree)
        extensions = Path(tmp) / "torch_extensions"
        built = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
        if built.is_dir():  # start from the cached build of the unmutated scan
            shutil.copytree(built, extensions, symlinks=True)
        env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(extensions), PYTHONDONTWRITEBYTECODE="1")
        for m in chosen:
            caught, seconds = run_mutation(m, tree, env)
            rows.append((m, caught))
            print(f"{m.name:55s} {caught}  ({seconds:.0f} s)", flush=True)
    table = ["| family | mutation | kind | file | caught by |", "|---|---|---|---|---|"]
    table += [f"| {m.family} | {m.name} | {m.kind} | `{m.path}` | `{caught}` |" for m, caught in rows]
    print("\n".join(table))
    if args.markdown:
        args.markdown.write_text("\n".join(table) + "\n")
    return 1 if any(c == "NOT CAUGHT" for _, c in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
