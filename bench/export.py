"""Decoding speed of exported Hugging Face models (CPU): tokens/s of `generate` on the folder
written by `neurograph export hf`, loaded with `AutoModelForCausalLM.from_pretrained(...,
trust_remote_code=True)`, over the project's own `generate`, per family, greedy, same prompt and
length, same weights (goal >= 0.8: transformers' per-step overhead must not eat the O(1) decoding).

Usage: .venv/bin/python bench/export.py [--threads N] [--new-tokens 256] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch.export_hf import save_hf_model  # noqa: E402
from model import build_model  # noqa: E402

VOCAB = 512
FAMILIES = {
    "transformer": {"arch": "transformer", "d_model": 256, "n_layer": 4, "n_head": 4, "d_ff": 1024, "max_seq_len": 512},
    "inl": {"arch": "inl", "d_model": 256, "n_layer": 4, "n_head": 4, "num_iterations": 5, "max_seq_len": 512},
    "inn": {"arch": "inn", "d_model": 128, "n_neurons": 8, "n_layer": 2, "n_head": 4, "dropout": 0.0},
    "mamba_stack": {"arch": "mamba_stack", "d_model": 256, "n_layer": 4},
    "lstm": {"arch": "lstm", "d_model": 256, "n_layer": 2, "dropout": 0.0},
}


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens generated per run")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="prompt length")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    new, repeats = (8, 1) if args.quick else (args.new_tokens, args.repeats)
    prompt = torch.randint(0, VOCAB, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    print(f"greedy decoding, prompt {args.prompt_tokens} tokens, {new} new tokens, {torch.get_num_threads()} threads")
    print(f"{'family':<12}{'project tok/s':>15}{'exported tok/s':>16}{'ratio':>8}  goal >= 0.8")
    for name, section in FAMILIES.items():
        section = {**section, "vocab_size": VOCAB}
        if args.quick:
            section.update(d_model=32, n_layer=1)
        torch.manual_seed(0)
        model = build_model(section).eval()
        with tempfile.TemporaryDirectory(prefix="ng-export-bench-") as tmp:
            save_hf_model(model, section, Path(tmp))
            exported = AutoModelForCausalLM.from_pretrained(tmp, trust_remote_code=True).eval()
        ours = model.generate(prompt, new)
        theirs = exported.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        assert torch.equal(ours, theirs), f"{name}: exported greedy output differs"
        t_project = seconds(lambda: model.generate(prompt, new), repeats)
        t_exported = seconds(lambda: exported.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False),
                             repeats)
        print(f"{name:<12}{new / t_project:>15.1f}{new / t_exported:>16.1f}{t_project / t_exported:>8.2f}")


if __name__ == "__main__":
    main()
