"""Run as a script in a fresh process (Hugging Face offline): EleutherAI's lm-evaluation-harness,
through its standard `hf` backend with no client-side options (`pretrained=DIR,trust_remote_code=True`
and a batch size), on three local tasks written here: rolling log-likelihood, multiple choice and
generate_until; and the multiple-choice and generation answers computed from the model directly.

    python lm_eval_checker.py SPEC.json OUT_DIR
SPEC: {"dirs": {name: export dir}, "batch_sizes": [...], "rolling": [text], "choice": [{context,
choices, label}], "generate": [{prompt, target}]}. Writes OUT_DIR/report.json:
{name: {"batch_<b>": {task: [per-document responses]}, "direct": {"choice": [[ll per choice]],
"generate": [text]}}}."""
import json
import sys
from pathlib import Path

import torch
import yaml

TASKS = {
    "ng_rolling": {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
                   "metric_list": [{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}]},
    "ng_choice": {"output_type": "multiple_choice", "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}",
                  "doc_to_target": "{{label}}", "metric_list": [{"metric": "acc"}]},
    "ng_generate": {"output_type": "generate_until", "doc_to_text": "{{prompt}}", "doc_to_target": "{{target}}",
                    "generation_kwargs": {"until": ["\n"], "max_gen_toks": 12, "do_sample": False},
                    "metric_list": [{"metric": "exact_match"}]},
}
DATA = {"ng_rolling": "rolling", "ng_choice": "choice", "ng_generate": "generate"}


def write_tasks(spec: dict, root: Path) -> None:
    """Each task as lm-eval's YAML over a local JSON-lines file."""
    for task, fields in TASKS.items():
        docs = [{"text": d} if task == "ng_rolling" else d for d in spec[DATA[task]]]
        data = root / f"{task}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        config = {"task": task, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                  "test_split": "test", **fields}
        (root / f"{task}.yaml").write_text(yaml.safe_dump(config))


@torch.no_grad()
def direct(directory: str, spec: dict) -> dict:
    """The same answers from the model itself: each choice's log P(" " + choice | context) from its
    log-softmax (context and continuation split as lm-eval splits them: the whole text's tokens after
    the context's), and each prompt's greedy continuation up to EOS, cut at the first newline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
    choices = []
    for doc in spec["choice"]:
        context = tok.encode(doc["context"], add_special_tokens=False)
        row = []
        for choice in doc["choices"]:
            whole = tok.encode(doc["context"] + " " + choice, add_special_tokens=False)
            logp = model(torch.tensor([whole[:-1]]), use_cache=False).logits[0].float().log_softmax(-1)
            row.append(sum(logp[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        choices.append(row)
    generations = []
    for doc in spec["generate"]:
        prompt = tok(doc["prompt"], return_tensors="pt", add_special_tokens=False)
        new = model.generate(**prompt, max_new_tokens=TASKS["ng_generate"]["generation_kwargs"]["max_gen_toks"],
                             do_sample=False)[0, prompt["input_ids"].shape[1]:]
        generations.append(tok.decode(new, skip_special_tokens=True).split("\n")[0])
    return {"choice": choices, "generate": generations}


def main(spec_file: str, out_dir: str) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    spec, root = json.loads(Path(spec_file).read_text()), Path(out_dir)
    write_tasks(spec, root)
    tasks = TaskManager(include_path=str(root))
    report = {}
    for name, directory in spec["dirs"].items():
        report[name] = {"direct": direct(directory, spec)}
        for batch in spec["batch_sizes"]:
            results = simple_evaluate(model="hf", model_args={"pretrained": directory, "trust_remote_code": True},
                                      tasks=list(TASKS), task_manager=tasks, batch_size=batch, log_samples=True,
                                      device="cpu")
            report[name][f"batch_{batch}"] = {
                task: [s["resps"] for s in sorted(samples, key=lambda s: s["doc_id"])]
                for task, samples in results["samples"].items()}
    (root / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
