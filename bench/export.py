"""Decoding speed of exported Hugging Face models (CPU): tokens/s of `generate` on the folder
written by `neurograph export hf`, loaded with `AutoModelForCausalLM.from_pretrained(...,
trust_remote_code=True)`, over the project's own `generate`, per family, greedy, same prompt and
length, same weights (goal >= 0.8: transformers' per-step overhead must not eat the O(1) decoding).
Each family at the shape of its shipped config (`configs/*.yaml`, model section as shipped; a
vocabulary the config leaves to the data takes `data prepare`'s default, 8,000), randomly
initialised (speed does not depend on the weights; greedy outputs are checked equal).

Usage: .venv/bin/python bench/export.py [--threads N] [--new-tokens 96] [--quick]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from neurograph.launch.config import read_yaml
from neurograph.launch.export.hf import save_hf_model
from neurograph.model import build_model

REPO = Path(__file__).resolve().parent.parent

CONFIGS = {"transformer": "transformer_text8", "inl": "inl_tiny", "inn": "inn_text8", "mamba_stack": "mamba_text8",
           "lstm": "lstm_text8"}
DEFAULT_VOCAB = 8000  # `data prepare --vocab-size` default


def best_seconds(fns, repeats: int) -> list[float]:
    """Best wall time of each function over `repeats` rounds, the functions taking turns within a
    round (so a slow spell of the machine hits all of them alike); one warm-up round first."""
    best = [float("inf")] * len(fns)
    for round_ in range(repeats + 1):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if round_:
                best[i] = min(best[i], time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--new-tokens", type=int, default=96,
                        help="tokens generated per run (prompt + new fit every shipped max_seq_len)")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="prompt length")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (best is kept)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    new, repeats = (8, 1) if args.quick else (args.new_tokens, args.repeats)
    print(f"greedy decoding, prompt {args.prompt_tokens} tokens, {new} new tokens, {torch.get_num_threads()} threads")
    print(f"{'family':<12}{'config':<20}{'project tok/s':>15}{'exported tok/s':>16}{'ratio':>8}  goal >= 0.8")
    for name, config in CONFIGS.items():
        section = {"vocab_size": DEFAULT_VOCAB, **read_yaml(REPO / "configs" / f"{config}.yaml")["model"]}
        if args.quick:
            section.update(d_model=32, n_layer=1)
        prompt = torch.randint(0, section["vocab_size"], (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        model = build_model(section).eval()
        with tempfile.TemporaryDirectory(prefix="ng-export-bench-") as tmp:
            save_hf_model(model, section, Path(tmp))
            exported = AutoModelForCausalLM.from_pretrained(tmp, trust_remote_code=True).eval()
        ours = model.generate(prompt, new)
        theirs = exported.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        assert torch.equal(ours, theirs), f"{name}: exported greedy output differs"
        t_project, t_exported = best_seconds(
            [lambda: model.generate(prompt, new),
             lambda: exported.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)], repeats)
        print(f"{name:<12}{config:<20}{new / t_project:>15.1f}{new / t_exported:>16.1f}{t_project / t_exported:>8.2f}")


if __name__ == "__main__":
    main()
