"""Run as a script in a fresh process: load exported Hugging Face folders with transformers alone
and report what the test compares. NeuroGraph's packages (and pydantic, DeepSpeed) cannot be
imported here: the repository leaves sys.path, the editable install's finder leaves sys.meta_path,
and an import hook records any attempt to import them.

    python hf_checker.py SPEC.json OUT_DIR
SPEC: a list of cases {name, dir, dtype, held_ids, prompt_ids, prompt, paragraph, oov_text[, chat, eos_id]}. Every
tokenizer is loaded first, without trust_remote_code. Writes OUT_DIR/logits.safetensors (each case's
logits on held_ids) and OUT_DIR/report.json."""
import importlib.abc
import importlib.util
import json
import sys
from pathlib import Path

# NeuroGraph lives under `neurograph.` only; `kernels` is Hugging Face's (a transformers dependency)
BLOCKED = ("neurograph", "pydantic", "deepspeed")
REPO = Path(__file__).resolve().parents[2]
attempts: list[str] = []


class RefuseProject(importlib.abc.MetaPathFinder):
    """Records imports of blocked packages and lets no other finder resolve them."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            sys.modules.pop(name, None)
            raise ModuleNotFoundError(f"{name} is blocked in the export check", name=name)
        return None


sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (REPO, Path(__file__).resolve().parent)]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")
                    and "editable" not in getattr(f, "__name__", "")]
# transformers probes optional packages with importlib.util.find_spec: answer "absent", not an error.
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in BLOCKED else _find_spec(name, package)
sys.meta_path.insert(0, RefuseProject())

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, pipeline  # noqa: E402


class ForceAt(LogitsProcessor):
    """Forces `token` as the `step`-th generated token (counted from 0)."""

    def __init__(self, prompt_len: int, step: int, token: int):
        self.at, self.token = prompt_len + step, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.at:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.token] = 0.0
        return scores


@torch.no_grad()
def reorder_error(model, ids: list[int]) -> float:
    """Beam search's cache reordering: three rows cached, reordered [2, 0, 0], one more token,
    against the same rows run whole without a cache (max |logit difference|)."""
    rows, nxt = torch.tensor([ids[0:16], ids[16:32], ids[32:48]]), torch.tensor([[ids[48]]] * 3)
    order = torch.tensor([2, 0, 0])
    out = model(rows, use_cache=True)
    cache = out["cache"] if "cache" in out else out["past_key_values"]
    cache.reorder_cache(order)
    step = model(nxt, cache=cache, use_cache=True).logits[:, -1]
    whole = model(torch.cat([rows[order], nxt], dim=1), use_cache=False).logits[:, -1]
    return (step - whole).abs().max().item()


@torch.no_grad()
def padded_generation(model, tok, ids: list[int], cache: bool) -> tuple[list, list, float]:
    """4 prompts of different lengths, in one left-padded batch and each alone: (greedy continuations
    of the batch, those of each prompt, max |difference| of the next-token logits)."""
    prompts = [ids[:n] for n in (5, 11, 8, 16)]
    tok.padding_side = "left"
    batch = tok.pad({"input_ids": prompts}, return_tensors="pt")
    together = model.generate(**batch, max_new_tokens=10, do_sample=False, use_cache=cache)
    alone = [model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, use_cache=cache)[0, len(p):]
             for p in prompts]
    next_logits = model(**batch, use_cache=cache).logits[:, -1]
    own = torch.stack([model(torch.tensor([p]), use_cache=cache).logits[0, -1] for p in prompts])
    return (together[:, batch["input_ids"].shape[1]:].tolist(), [a.tolist() for a in alone],
            (next_logits - own).abs().max().item())


def check(case: dict, tok) -> tuple[dict, torch.Tensor]:
    dtype = torch.bfloat16 if case["dtype"] == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(case["dir"], trust_remote_code=True, dtype=dtype, use_safetensors=True)
    report = {"class": type(model).__name__, "tokenizer_class": type(tok).__name__}
    with torch.no_grad():
        logits = model(torch.tensor([case["held_ids"]])).logits[0].float()
    if case["dtype"] == "bf16":
        return report, logits
    prompt = torch.tensor([case["prompt_ids"]])
    greedy = model.generate(prompt, max_new_tokens=48, do_sample=False)
    report["greedy_ids"] = greedy[0].tolist()
    report["greedy_uncached_ids"] = model.generate(prompt, max_new_tokens=48, do_sample=False, use_cache=False)[0].tolist()
    beams = [model.generate(prompt, max_new_tokens=12, num_beams=3, do_sample=False, use_cache=c)[0].tolist()
             for c in (True, False)]
    report["beam_cached_ids"], report["beam_uncached_ids"] = beams
    report["reorder_max_diff"] = reorder_error(model, case["held_ids"])
    stop = report["greedy_ids"][len(case["prompt_ids"]) + 5]  # stop where this token is first produced
    report["eos_stopped_ids"] = model.generate(prompt, max_new_tokens=48, do_sample=False, eos_token_id=stop)[0].tolist()
    report["eos_token"] = stop
    generator = pipeline("text-generation", model=model, tokenizer=tok)
    report["pipeline_text"] = generator(case["prompt"], max_new_tokens=8, do_sample=False)[0]["generated_text"]
    report["padded_cached"] = padded_generation(model, tok, case["held_ids"], cache=True)
    report["padded_uncached"] = padded_generation(model, tok, case["held_ids"], cache=False)
    report["roles"] = {role: getattr(tok, f"{role}_token_id") for role in ("bos", "eos", "pad", "unk")}
    report["generation_eos"] = model.generation_config.eos_token_id
    report["oov_ids"] = tok.encode(case["oov_text"], add_special_tokens=False)
    report["paragraph_ids"] = tok.encode(case["paragraph"], add_special_tokens=False)
    report["paragraph_decoded"] = tok.decode(report["paragraph_ids"])
    if "chat" in case:
        report["chat_text"] = tok.apply_chat_template(case["chat"], tokenize=False, add_generation_prompt=True)
        report["chat_ids"] = tok.apply_chat_template(case["chat"], add_generation_prompt=True, return_dict=False)
        # EOS produced at the 6th new token: the exported generation config alone must stop there
        force = ForceAt(prompt.shape[1], 5, case["eos_id"])
        report["eos_forced_ids"] = model.generate(prompt, max_new_tokens=48, do_sample=False,
                                                  logits_processor=[force])[0].tolist()
    return report, logits


def main(spec_file: str, out_dir: str) -> None:
    reports, logits = {}, {}
    cases = json.loads(Path(spec_file).read_text())
    tokenizers = [AutoTokenizer.from_pretrained(case["dir"]) for case in cases]  # no trust_remote_code
    reports["_custom_code_for_tokenizers"] = sorted(m for m in sys.modules if m.startswith("transformers_modules"))
    for case, tok in zip(cases, tokenizers):
        reports[case["name"]], logits[case["name"]] = check(case, tok)
    reports["_imported"] = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED)) + attempts
    save_file(logits, str(Path(out_dir) / "logits.safetensors"))
    (Path(out_dir) / "report.json").write_text(json.dumps(reports))


if __name__ == "__main__":
    main(*sys.argv[1:])
