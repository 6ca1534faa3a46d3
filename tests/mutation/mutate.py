"""Mutation run: break the math on purpose and check that a test notices.

    .venv/bin/python tests/mutation/mutate.py [--only NAME ...] [--markdown docs/mutation.md]

Each mutation replaces one snippet inside one function (return zeros, drop a term, swap an index,
skip the gate) in a scratch copy of the repository, runs the fast tests of that model family or
kernel there (`pytest -x`), and records the first failing test. A mutation that no test catches is
printed as "NOT CAUGHT" and makes the script exit 1. The working tree is never modified; the C++
kernels are rebuilt in a scratch torch-extensions directory. Not part of `make test` (minutes);
tests/mutation/test_mutation_list.py checks that every mutation still applies.

A mutation is anchored by function: `function` is a Python function's qualified name
(`MambaBlock.forward`, `INNLayer._keep_qkv.policy`), found with `ast`, or a top-level C/C++
function's name (every overload, each up to its matching brace). `old` must occur exactly once
inside it, compared line by line without leading and trailing whitespace, so edits elsewhere in
the file or re-indenting the function do not break the mutation.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]

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
    "triton_conv": ["tests/kernels/test_triton_causal_conv1d.py"],
}


class MutationError(ValueError):
    """A mutation does not apply: its function is missing, or its snippet is not in it exactly once."""


@dataclass(frozen=True)
class Mutation:
    name: str
    family: str    # a key of TESTS
    kind: str      # return zeros | drop a term | swap an index | skip the gate | skip the mask | skip a check
    path: str
    function: str  # Python: qualified name (Class.method); C/C++: function name
    old: str       # occurs exactly once inside `function`
    new: str



MUTATIONS = [
    Mutation("transformer: MLP branch dropped", "transformer", "drop a term", "model/transformer.py",
             "TransformerBlock.forward", "return x + self.mlp(self.ln_mlp(x))", "return x"),
    Mutation("attention: not causal", "transformer", "skip the mask", "model/layers.py", "CausalSelfAttention.forward",
             "dropout_p=dropout_p, is_causal=True)", "dropout_p=dropout_p, is_causal=False)"),
    Mutation("attention: q and k swapped", "transformer", "swap an index", "model/layers.py",
             "CausalSelfAttention.forward",
             "q, k, v = self.qkv(x).split(d, dim=2)", "k, q, v = self.qkv(x).split(d, dim=2)"),
    Mutation("inn: router residual dropped", "inn", "drop a term", "model/inn.py", "INNLayer.route",
             "return h + r.view(b, t, n, d).transpose(1, 2)", "return r.view(b, t, n, d).transpose(1, 2)"),
    Mutation("inn: head reads neuron 0, not the mean", "inn", "swap an index", "model/inn.py", "INN._head",
             "return self.ln_f(h.mean(1)) @ self.embed.weight.T", "return self.ln_f(h[:, 0]) @ self.embed.weight.T"),
    Mutation("inn: dense router returns zeros", "inn", "return zeros", "model/neuron_router.py", "DenseRouter.forward",
             "y = neuron_attention(*self.heads(m), self.impl,", "y = 0 * neuron_attention(*self.heads(m), self.impl,"),
    Mutation("mamba: gate skipped in the full-sequence path", "mamba_stack", "skip the gate", "model/mamba.py",
             "MambaBlock.forward", "flat(C), D, flat(z), delta_bias=dt_bias", "flat(C), D, None, delta_bias=dt_bias"),
    Mutation("mamba: conv bias not passed", "mamba_stack", "drop a term", "model/mamba.py", "MambaBlock._scan_inputs",
             "conv1d_silu(xi, self.conv_weight, self.conv_bias,", "conv1d_silu(xi, self.conv_weight, None,"),
    Mutation("mamba_stack: residual dropped", "mamba_stack", "drop a term", "model/mamba_stack.py",
             "MambaStack.forward", "x = x + self.drop(block(norm(x)))", "x = self.drop(block(norm(x)))"),
    Mutation("lstm: logits zero", "lstm", "return zeros", "model/lstm.py", "LSTMLanguageModel._logits",
             "return self.drop(y) @ self.embed.weight.T", "return 0 * self.drop(y) @ self.embed.weight.T"),
    Mutation("lstm: input embedding replaced by zeros", "lstm", "return zeros", "model/lstm.py",
             "LSTMLanguageModel.forward", "self.lstm(self.drop(self.embed(input_ids)))",
             "self.lstm(0 * self.drop(self.embed(input_ids)))"),
    Mutation("inl: group offsets ignored", "inl", "drop a term", "model/inl.py", "IntegratorBranch.equilibrium",
             "return (self.mu_global + offsets).repeat_interleave(self.group_size)",
             "return (self.mu_global + 0 * offsets).repeat_interleave(self.group_size)"),
    Mutation("inl: no excitation at evaluation", "inl", "return zeros", "model/inl.py", "IntegratorBranch.excitation",
             "return self.excitation_sparsity * wave", "return None"),
    Mutation("inl: energy measured against mu", "inl", "drop a term", "model/inl.py", "IntegratorBranch._record",
             "z_star = mu + (1 - alpha) * v_target / beta", "z_star = mu"),
    Mutation("inl: integrator branch skipped", "inl", "return zeros", "model/inl.py", "INLBlock.forward",
             "x = x + self.drop(self.integrator(self.ln_int(x), a, controller))", "x = x"),
    Mutation("inl: controller ignores v", "inl", "drop a term", "model/inl.py", "IntegratorController.forward",
             "pre = pre + F.linear(v, self.fc_in.weight[:, 2 * d :])", "pass"),
    Mutation("inl: redundant per-channel global mu", "inl", "drop a term", "model/inl.py", "IntegratorBranch.__init__",
             "self.mu_global = nn.Parameter(torch.zeros(1 if self.group_size else d))",
             "self.mu_global = nn.Parameter(torch.zeros(d))"),
    Mutation("inl: old checkpoint accepted unconverted", "inl", "skip a check", "model/inl.py",
             "_convert_old_equilibrium", "if spread > 1e-6 * (1.0 + mu.abs().max().item()):", "if False:"),
    Mutation("hf_inl: feed-forward returns zeros", "hf_inl", "return zeros", "model/hf_integrator.py",
             "INLFeedForward.forward", "return self.integrator(hidden_states, hidden_states, self._controller[0])",
             "return 0 * hidden_states"),
    Mutation("integrator: restoring force dropped", "integrator", "drop a term", "kernels/integrator/reference.py",
             "integrator_step", "v_new = torch.addcmul(v_new, beta, z - mu, value=-1.0)", "v_new = v_new"),
    Mutation("integrator: alpha and gate swapped", "integrator", "swap an index", "kernels/integrator/reference.py",
             "controller_activations",
             "torch.sigmoid(raw[..., 0, :]), F.softplus(raw[..., 1, :]), torch.sigmoid(raw[..., 2, :])",
             "torch.sigmoid(raw[..., 2, :]), F.softplus(raw[..., 1, :]), torch.sigmoid(raw[..., 0, :])"),
    Mutation("integrator: gate skipped", "integrator", "skip the gate", "kernels/integrator/reference.py", "integrator_step",
             "z_new = torch.addcmul(z, gate, v_new, value=dt)", "z_new = z + dt * v_new"),
    Mutation("scan (reference, chunked): gate skipped", "scan", "skip the gate", "kernels/selective_scan/reference.py",
             "finish", "y = y * F.silu(z)", "y = y"),
    Mutation("scan (reference): state update drops the input", "scan", "drop a term", "kernels/selective_scan/reference.py",
             "selective_scan_ref",
             "h = decay * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]", "h = decay * h"),
    Mutation("scan (chunked): dA dropped in backward", "scan", "return zeros", "kernels/selective_scan/chunked.py",
             "_chunk_backward", "gA_acc.addcmul_(q, delta[l, ..., None])", "pass"),
    Mutation("scan (chunked): CPU's cache-sized channel tiles on CUDA", "scan", "skip a check",
             "kernels/selective_scan/chunked.py", "_channel_tiles",
             'budget, per_channel = ((_CUDA_TILE_ELEMENTS, chunk * b * nc * s) if device.type == "cuda"',
             'budget, per_channel = ((_STEP_ELEMENTS, b * nc * s) if device.type == "cuda"'),
    Mutation("scan (chunked): last state from the first chunk", "scan", "swap an index", "kernels/selective_scan/chunked.py",
             "_chunk_forward", "return y, starts, h[:, -1]", "return y, starts, h[:, 0]"),
    Mutation("scan (all): shape check skipped", "scan", "skip a check", "kernels/selective_scan/checks.py",
             "check_scan_inputs", "if tuple(x.shape) != expected[name]:", "if False:"),
    Mutation("scan (all): inputs not cast to the compute dtype", "scan", "skip a check", "kernels/selective_scan/checks.py",
             "scan_inputs", "return [None if x is None else x.to(dtype) for x in args]", "return list(args)"),
    Mutation("scan (cpp): size-1 channel axis keeps its stride", "scan", "skip a check", "kernels/selective_scan/cpu.py",
             "_time_major", "x = x.as_strided(x.shape, (*x.stride()[:-1], 1))", "pass"),
    Mutation("conv (reference): bias dropped", "cpu_kernels", "drop a term", "kernels/causal_conv1d/reference.py",
             "causal_conv1d_silu_ref", "pre += bias[:, None] if bias.dim() == 2 else bias", "pass"),
    Mutation("conv (triton): every sequence takes group 0's kernel", "triton_conv", "swap an index",
             "kernels/causal_conv1d/triton.py", "_conv_fwd_kernel", "g = m % G", "g = m * 0"),
    Mutation("conv (triton): input gradient through the mirrored tap", "triton_conv", "swap an index",
             "kernels/causal_conv1d/triton.py", "_conv_bwd_kernel",
             "dx += gpre * tl.load(w_g + (K - 1 - j) * D + c, mask=mc, other=0.0).to(tl.float32)[None, :]",
             "dx += gpre * tl.load(w_g + j * D + c, mask=mc, other=0.0).to(tl.float32)[None, :]"),
    Mutation("conv (triton): SiLU's derivative loses its second term", "triton_conv", "drop a term",
             "kernels/causal_conv1d/triton.py", "_silu_grad",
             "return dout.to(tl.float32) * sig * (1.0 + pre * (1.0 - sig))", "return dout.to(tl.float32) * sig"),
    Mutation("conv (triton): bias gradient dropped", "triton_conv", "return zeros", "kernels/causal_conv1d/triton.py",
             "_conv_bwd_kernel", "tl.store(partial + K * D, tl.sum(gpre, 0), mask=mc)",
             "tl.store(partial + K * D, tl.sum(gpre, 0) * 0.0, mask=mc)"),
    Mutation("dropout: backward draws another mask", "cpu_kernels", "swap an index", "kernels/dropout/cpu.py",
             "CounterDropout.backward",
             "apply(grad.contiguous(), ctx.seed, ctx.p)", "apply(grad.contiguous(), ctx.seed + 1, ctx.p)"),
    Mutation("neuron attention: dropout on the output, not the weights", "cpu_kernels", "swap an index",
             "kernels/neuron_attention/reference.py", "neuron_attention_reference",
             "return (apply_dropout(w, dropout) @ v).transpose(1, 2)",
             "return apply_dropout(w @ v, dropout).transpose(1, 2)"),
    Mutation("top-k neuron attention: dropout skipped", "cpu_kernels", "skip the mask", "kernels/neuron_attention/reference.py",
             "topk_attention_reference",
             "w = apply_dropout(torch.softmax(logits, dim=2), dropout)", "w = torch.softmax(logits, dim=2)"),
    Mutation("conv (cpp): bias gradient dropped (rebuilds the C++ conv)", "cpu_kernels", "return zeros",
             "kernels/causal_conv1d/cpu.cpp", "backward_kernel", "gb[j] += gp[j];", "gb[j] += T(0);"),
    Mutation("conv (cpp): input gradient misses the newest tap but one (rebuilds the C++ conv)", "cpu_kernels",
             "drop a term", "kernels/causal_conv1d/cpu.cpp", "backward_kernel",
             "for (int64_t k = k0; k < s.K - 1; ++k) {", "for (int64_t k = k0 + 1; k < s.K - 1; ++k) {"),
    Mutation("scan (cpp): gate skipped (rebuilds the C++ scan)", "scan", "skip the gate",
             "kernels/selective_scan/cpu.cpp", "forward_kernel",
             "for (int64_t j = 0; j < DB; ++j) acc[j] *= st.z[j] * sigmoid(st.z[j]);",
             "for (int64_t j = 0; j < DB; ++j) acc[j] *= T(1);"),
    Mutation("cpu math: softplus loses its max(v, 0) term (rebuilds the C++ scan)", "scan", "drop a term",
             "kernels/cpu_math.h", "softplus", "return std::max(v, 0.0f) + log1p_unit(exp(-std::fabs(v)));",
             "return log1p_unit(exp(-std::fabs(v)));"),
    Mutation("cpu extension: build name blind to the shared headers", "cpu_kernels", "skip a check",
             "kernels/cpu_extension.py", "build_name", "source.read_bytes() + headers)", "source.read_bytes())"),
    Mutation("scan (cpp): odd states' partial sum dropped (rebuilds the C++ scan)", "scan", "drop a term",
             "kernels/selective_scan/cpu.cpp", "output", "y[j] += odd[j] + D[j] * u[j];", "y[j] += D[j] * u[j];"),
    Mutation("inn (recomputed memory half): out_proj weight gradient zeroed", "inn", "return zeros", "model/mamba.py",
             "_RecomputedMamba._slice_backward", "{block.out_proj.weight: g2.T @ y.reshape(-1, y.shape[-1]),",
             "{block.out_proj.weight: torch.zeros_like(block.out_proj.weight),"),
    Mutation("inn (recomputed memory half): every backward slice starts from the first slice's states", "inn",
             "swap an index", "model/mamba.py", "_RecomputedMamba.backward",
             "starts[lo * per_index:hi * per_index], gs)", "starts[:(hi - lo) * per_index], gs)"),
    Mutation("inn (recomputed router half): q/k/v projections recomputed, not kept", "inn", "drop a term",
             "model/inn.py", "INNLayer._keep_qkv.policy",
             "return CheckpointPolicy.MUST_SAVE", "return CheckpointPolicy.PREFER_RECOMPUTE"),
    Mutation("dropout (cpp): kept values not rescaled (rebuilds the C++ dropout)", "cpu_kernels", "drop a term",
             "kernels/dropout/cpu.cpp", "apply_run", "? x[k] * scale : T(0);", "? x[k] : T(0);"),
    Mutation("scan (cpp): backward's forward output not gated (rebuilds the C++ scan)", "inn", "skip the gate",
             "kernels/selective_scan/cpu.cpp", "backward_kernel",
             "yt[j] = in.z.p ? ys[j] * st.z[j] * sigmoid(st.z[j]) : ys[j];", "yt[j] = ys[j];"),
]


def _python_spans(text: str, function: str) -> list[tuple[int, int]]:
    """The (first, end) line indices of each definition of the function whose qualified name is `function`."""
    spans = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                if name == function and not isinstance(child, ast.ClassDef):
                    spans.append((child.lineno - 1, child.end_lineno))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(text), "")
    return spans


def _c_spans(text: str, function: str) -> list[tuple[int, int]]:
    """The (first, end) line indices of each top-level C/C++ definition of `function`: from the unindented
    line that names it to the brace closing its body (braces counted outside // comments)."""
    lines = text.splitlines()
    head = re.compile(rf"[^\s/#].*\b{re.escape(function)}\s*\(")
    spans = []
    for first in (i for i, line in enumerate(lines) if head.match(line)):
        depth = 0
        for end, line in enumerate(lines[first:], first + 1):
            code = line.split("//")[0]
            if ";" in code and depth == 0 and "{" not in code.split(";")[0]:
                break  # a declaration, not a definition
            depth += code.count("{") - code.count("}")
            if depth == 0 and "}" in code:
                spans.append((first, end))
                break
    return spans


def mutated_text(m: Mutation, root: Path = ROOT) -> str:
    """The text of `root / m.path` with `m.old` replaced by `m.new` inside `m.function` only.

    `old` matches with each line's leading and trailing whitespace free; `new` takes the indentation
    of the line where the match starts. Raises MutationError unless `old` occurs there exactly once."""
    text = (root / m.path).read_text()
    spans = (_python_spans if m.path.endswith(".py") else _c_spans)(text, m.function)
    if not spans:
        raise MutationError(f"{m.name}: no function {m.function} in {m.path}")
    pattern = re.compile(r"[ \t]*\n[ \t]*".join(re.escape(line.strip()) for line in m.old.strip().splitlines()))
    lines = text.splitlines(keepends=True)
    found = [(first, end, match) for first, end in spans for match in pattern.finditer("".join(lines[first:end]))]
    if len(found) != 1:
        raise MutationError(f"{m.name}: snippet found {len(found)} times in {m.path}, function {m.function}, "
                            f"expected once")
    first, end, match = found[0]
    body = "".join(lines[first:end])
    indent = re.match(r"[ \t]*", body[body.rfind("\n", 0, match.start()) + 1:]).group()
    new = textwrap.indent(textwrap.dedent(m.new).strip(), indent).lstrip()
    return "".join(lines[:first]) + body[:match.start()] + new + body[match.end():] + "".join(lines[end:])


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "mlruns", "mlartifacts", "__pycache__", ".pytest_cache",
                                    "*.egg-info", "results", "build")
    shutil.copytree(ROOT, dest, ignore=ignore)


_PACKAGE_FOLDERS = """import importlib.util, sys
for name in sys.argv[1:]:
    print(importlib.util.find_spec(name).submodule_search_locations[0])"""


def namespace_env(tree: Path, namespace: Path) -> dict:
    """os.environ with PYTHONPATH leading to `namespace`/neurograph/X -> `tree`/X for each package of
    pyproject's package-dir, so that `neurograph.X` (in pytest and its subprocesses) is the copy's, not the
    editable install's: the standard path finder comes before the editable finder. Checked with find_spec."""
    package_dir = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    (namespace / "neurograph").mkdir(parents=True)  # no __init__.py: a namespace package, as installed
    for package, folder in package_dir.items():
        (namespace / package.replace(".", "/")).symlink_to(tree / folder, target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(namespace), os.environ.get("PYTHONPATH")])))
    found = subprocess.run([sys.executable, "-c", _PACKAGE_FOLDERS, *package_dir], env=env, cwd=tree,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    stray = [path for path in found if not Path(path).resolve().is_relative_to(tree.resolve())]
    if stray:
        raise RuntimeError(f"neurograph packages resolve outside the scratch copy {tree}: {stray}")
    return env


def run_mutation(m: Mutation, tree: Path, env: dict) -> tuple[str, float]:
    """Apply `m` in `tree`, run its family's tests, restore the file. Returns (caught-by, seconds)."""
    target = tree / m.path
    original = target.read_text()
    target.write_text(mutated_text(m, tree))
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
    for m in chosen:  # a mutation that does not apply fails now, not after minutes of tests
        mutated_text(m)
    rows = []
    with tempfile.TemporaryDirectory(prefix="neurograph-mutation-") as tmp:
        tree = Path(tmp) / "main"
        _copy_tree(tree)
        extensions = Path(tmp) / "torch_extensions"
        built = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
        if built.is_dir():  # start from the cached builds of the unmutated kernels
            shutil.copytree(built, extensions, symlinks=True)
        env = dict(namespace_env(tree, Path(tmp) / "namespace"), TORCH_EXTENSIONS_DIR=str(extensions),
                   PYTHONDONTWRITEBYTECODE="1")
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
