"""`neurograph export hf`: tiny models of every family trained through `neurograph train`
(two processes, ZeRO-2; one also ZeRO-3), exported, then loaded by transformers alone in a fresh
process (tests/export/hf_checker.py) and compared with the trained model and `neurograph generate`.
The INL trains on data with the model card's role tokens and exports its config's chat template."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from neurograph.data_pipeline import load_manifest, load_tokenizer
from neurograph.launch import cli
from tests.conftest import corpus_text

pytestmark = pytest.mark.slow

ARCHS = {
    "transformer": {"arch": "transformer", "d_model": 32, "n_layer": 2, "n_head": 4, "d_ff": 64, "max_seq_len": 128},
    "inl": {"arch": "inl", "d_model": 32, "n_layer": 2, "n_head": 4, "num_iterations": 2, "controller_rank": 16,
            "max_seq_len": 128, "positions": "rope"},
    "inn": {"arch": "inn", "d_model": 32, "n_neurons": 4, "n_layer": 2, "n_head": 2, "d_state": 8, "dropout": 0.0},
    "mamba_stack": {"arch": "mamba_stack", "d_model": 32, "n_layer": 2, "d_state": 8},
    "lstm": {"arch": "lstm", "d_model": 32, "n_layer": 2, "dropout": 0.0},
}
SENTENCEPIECE_ARCH = "mamba_stack"  # trained on SentencePiece data, the INL on chat_data, the others on characters
HELD_BACK = corpus_text(chars=260_000)[250_000:]  # after the 200k characters char_data holds
MLFLOW_RUN = "lstm"  # the only run that tracks to MLflow (its store: sqlite in the run directory)
PROMPT = "ROMEO:\nWhat"
CHECKER = Path(__file__).with_name("hf_checker.py")
LM_EVAL_CHECKER = Path(__file__).with_name("lm_eval_checker.py")
OOV_TEXT = "Café naïve — 3×4 ☃ 東京."  # characters the training text lacks
REPO = Path(__file__).resolve().parents[2]
INL_TEMPLATE = yaml.safe_load((REPO / "configs" / "inl_tiny.yaml").read_text())["export"]["chat_template"]
CHAT = [{"role": "user", "content": "Who art thou?"}, {"role": "assistant", "content": "A tiny model."},
        {"role": "user", "content": "Then speak!"}]
CHAT_TEXT = "<USER> Who art thou?\n<ASSISTANT> A tiny model.\n<USER> Then speak!\n<ASSISTANT> "


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory) -> Path:
    """Characters, the INL card's role tokens and an EOS, prepared by `neurograph data prepare`."""
    root = tmp_path_factory.mktemp("chat_data")
    (root / "corpus.txt").write_text(corpus_text(chars=200_000))  # every character of the held-back text
    assert cli.main(["data", "prepare", "--input", str(root / "corpus.txt"), "--out", str(root / "data"),
                     "--tokenizer", "char", "--special-tokens", "<USER>,<ASSISTANT>,<SYSTEM>,<ERROR>",
                     "--eos-token", "<|endoftext|>", "--seq-len", "64", "--val-fraction", "0.1",
                     "--samples-per-shard", "32"]) == 0
    return root / "data"


@pytest.fixture(scope="module")
def sp_data(tmp_path_factory) -> Path:
    from neurograph.data_pipeline import prepare_corpus

    root = tmp_path_factory.mktemp("sp_data")
    (root / "corpus.txt").write_text(corpus_text(chars=80_000))
    prepare_corpus([str(root / "corpus.txt")], root / "data", tokenizer="sentencepiece", vocab_size=400, seq_len=64,
                   val_fraction=0.1, samples_per_shard=16)
    return root / "data"


def _start_training(root: Path, name: str, model: dict, data: Path, zero_stage: int) -> subprocess.Popen:
    cfg = {"model": model, "data": {"path": str(data), "seq_len": 64},
           "export": {"chat_template": INL_TEMPLATE if model["arch"] == "inl" else None},
           "trainer": {"max_steps": 3, "micro_batch_size": 4, "lr": 3e-3, "num_processes": 2, "eval_every": 0,
                       "eval_batches": 1, "log_every": 3, "seed": 7, "run_dir": str(root / name)},
           "deepspeed": {"zero_stage": zero_stage},
           "tracking": {"experiment": "export", "enabled": name == MLFLOW_RUN}}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    with open(root / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "neurograph.launch.cli", "train", "--config", str(root / f"{name}.yaml")],
                                stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, char_data, sp_data, chat_data) -> dict[str, Path]:
    """Run directories: every family with ZeRO-2, and the transformer with ZeRO-3 ("transformer_zero3"),
    trained concurrently."""
    root = tmp_path_factory.mktemp("runs")
    data = {SENTENCEPIECE_ARCH: sp_data, "inl": chat_data}
    jobs = {name: _start_training(root, name, model, data.get(name, char_data), 2) for name, model in ARCHS.items()}
    jobs["transformer_zero3"] = _start_training(root, "transformer_zero3", ARCHS["transformer"], char_data, 3)
    for name, proc in jobs.items():
        assert proc.wait(timeout=900) == 0, (root / f"{name}.log").read_text()[-4000:]
    return {name: root / name for name in jobs}


def export(run: Path, out: Path, *options: str) -> int:
    return cli.main(["export", "hf", "--run", str(run), "--out", str(out), *options])


@pytest.fixture(scope="module")
def reference(runs) -> dict[str, dict]:
    """What the project itself computes for every run: logits on held-back text, greedy ids."""
    from neurograph.launch.inference import load_trained_model

    out = {}
    for name, run in runs.items():
        model, tokenizer, _ = load_trained_model(run)
        held = tokenizer.encode(HELD_BACK[:100])
        prompt = tokenizer.encode(PROMPT)
        with torch.no_grad():
            logits = model(torch.tensor([held]))[0]
        greedy = model.generate(torch.tensor([prompt]), 48)[0].tolist()
        out[name] = {"held_ids": held, "prompt_ids": prompt, "logits": logits, "greedy_ids": greedy,
                     "tokenizer": tokenizer}
    return out


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    dirs = {name: root / name for name in runs}
    dirs["transformer_bf16"] = root / "transformer_bf16"
    for name, run in runs.items():
        assert export(run, dirs[name]) == 0
    assert export(runs["transformer"], dirs["transformer_bf16"], "--dtype", "bf16") == 0
    return dirs


@pytest.fixture(scope="module")
def checked(exported, reference, chat_data, tmp_path_factory) -> tuple[dict, dict]:
    """One fresh process checks every export: (report per case, logits per case)."""
    root = tmp_path_factory.mktemp("checked")
    cases = [{"name": name, "dir": str(path), "dtype": "bf16" if name.endswith("bf16") else "fp32",
              "held_ids": reference[name.removesuffix("_bf16")]["held_ids"],
              "prompt_ids": reference[name.removesuffix("_bf16")]["prompt_ids"], "prompt": PROMPT,
              "paragraph": HELD_BACK[100:1600] + "  two  spaces,  end\n\n", "oov_text": OOV_TEXT}
             for name, path in exported.items()]
    inl = next(c for c in cases if c["name"] == "inl")
    inl.update(chat=CHAT, eos_id=load_manifest(chat_data)["tokenizer"]["eos_id"])
    (root / "spec.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # stdin closed: transformers' "run custom code?" prompt (AutoTokenizer reads config.json) gets "no"
    proc = subprocess.run([sys.executable, str(CHECKER), str(root / "spec.json"), str(root)], capture_output=True,
                          text=True, timeout=900, cwd=root, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((root / "report.json").read_text()), load_file(str(root / "logits.safetensors"))


def test_project_packages_never_imported(checked):
    report, _ = checked
    assert report["_imported"] == []


@pytest.mark.parametrize("name", ARCHS)
def test_exported_model_equals_trained_model(name, checked, reference, capsys, runs):
    report, logits = checked
    ref = reference[name]
    torch.testing.assert_close(logits[name], ref["logits"], atol=1e-5, rtol=0)
    assert report[name]["greedy_ids"] == ref["greedy_ids"]
    # `neurograph generate --greedy` prints the same continuation
    assert cli.main(["generate", "--run", str(runs[name]), "--prompt", PROMPT, "--max-new-tokens", "48", "--greedy"]) == 0
    printed = capsys.readouterr().out  # (after DeepSpeed's messages when it consolidates shards)
    assert printed.endswith(ref["tokenizer"].decode(report[name]["greedy_ids"]) + "\n")
    expected_class = "NeuroGraphForCausalLM" if name in ("transformer", "inl") else "NeuroGraphRecurrentForCausalLM"
    assert report[name]["class"] == expected_class


@pytest.mark.parametrize("name", ARCHS)
def test_generate_options(name, checked):
    report = checked[0][name]
    assert report["greedy_uncached_ids"] == report["greedy_ids"]  # the cache changes cost, not results
    assert report["beam_cached_ids"] == report["beam_uncached_ids"]
    assert report["reorder_max_diff"] < 1e-5  # beam search's cache reordering keeps each row's own state
    assert len(report["beam_cached_ids"]) == len(report["greedy_ids"]) - 48 + 12
    stopped = report["eos_stopped_ids"]
    assert stopped[-1] == report["eos_token"] and stopped == report["greedy_ids"][: len(stopped)]
    assert report["pipeline_text"].startswith(PROMPT) and len(report["pipeline_text"]) > len(PROMPT)


@pytest.mark.parametrize("name", ["transformer", SENTENCEPIECE_ARCH, "inl"])  # characters, SentencePiece, + specials
def test_tokenizer_round_trip(name, checked, reference):
    report = checked[0][name]
    paragraph = HELD_BACK[100:1600] + "  two  spaces,  end\n\n"
    assert report["paragraph_decoded"] == paragraph
    assert report["paragraph_ids"] == reference[name]["tokenizer"].encode(paragraph)


def test_tokenizers_load_without_remote_code(checked):
    """`AutoTokenizer.from_pretrained(DIR)` without trust_remote_code: a transformers class, no custom code."""
    report = checked[0]
    assert report["_custom_code_for_tokenizers"] == []
    assert {report[name]["tokenizer_class"] for name in report if not name.startswith("_")} == {"TokenizersBackend"}


def test_inl_chat_template_and_eos(checked, reference, chat_data):
    """The INL run's config carries configs/inl_tiny.yaml's chat template, which the export uses by
    default; the role tokens are single ids; the exported generation config stops at EOS."""
    report, tokenizer = checked[0]["inl"], reference["inl"]["tokenizer"]
    manifest = load_manifest(chat_data)["tokenizer"]
    user, assistant = manifest["special_tokens"]["<USER>"], manifest["special_tokens"]["<ASSISTANT>"]
    assert report["chat_text"] == CHAT_TEXT
    assert report["chat_ids"] == tokenizer.encode(CHAT_TEXT)
    assert len(report["chat_ids"]) == len(CHAT_TEXT.replace("<USER>", "U").replace("<ASSISTANT>", "A"))
    assert [i for i in report["chat_ids"] if i in (user, assistant)] == [user, assistant, user, assistant]
    start = len(reference["inl"]["prompt_ids"])
    assert report["eos_forced_ids"] == report["greedy_ids"][: start + 5] + [manifest["eos_id"]]


@pytest.mark.parametrize("name", ARCHS)
def test_left_padded_batch_generates_what_each_prompt_alone_does(name, checked):
    """Greedy `generate` of 4 prompts of different lengths in one left-padded batch (the tokenizer
    pads, the mask goes in), with and without the cache: each row is its prompt's own generation
    (a row that stopped at EOS is padded after it)."""
    report = checked[0][name]
    for key in ("padded_cached", "padded_uncached"):
        together, alone, logits_diff = report[key]
        assert logits_diff < 1e-5, key  # the next-token logits too (tiny models often repeat one token)
        for row, own in zip(together, alone):
            assert row[: len(own)] == own and set(row[len(own):]) <= {report["roles"]["pad"]}, key


@pytest.mark.parametrize("name", ARCHS)
def test_roles_and_text_outside_the_vocabulary(name, checked, runs):
    """Every export has BOS, EOS and PAD (the data's EOS, as GPT-2), the generation config stops at
    EOS; characters the data never had become UNK (char) or bytes (SentencePiece)."""
    report = checked[0][name]
    data = yaml.safe_load((runs[name] / "config.yaml").read_text())["data"]["path"]
    info = load_manifest(data)["tokenizer"]
    roles = report["roles"]
    assert roles["bos"] == roles["eos"] == roles["pad"] == report["generation_eos"] == info["eos_id"] is not None
    ids = report["oov_ids"]
    if info["kind"] == "char":
        assert roles["unk"] == info["unk_id"] is not None
        assert ids == load_tokenizer(data).encode(OOV_TEXT) and ids.count(roles["unk"]) >= 5
    else:  # byte fallback: the project's tokenizer decodes the exported ids to the text
        assert load_tokenizer(data).decode(ids) == OOV_TEXT


@pytest.fixture(scope="module")
def lm_eval_report(exported, tmp_path_factory) -> dict:
    """lm-evaluation-harness on every family's export, at batch sizes 1 and 4 (lm_eval_checker.py)."""
    root = tmp_path_factory.mktemp("lm_eval")
    lines = [line for line in HELD_BACK[1600:].splitlines() if len(line) > 20]
    spec = {"dirs": {name: str(exported[name]) for name in ARCHS}, "batch_sizes": [1, 4],
            "rolling": [HELD_BACK[1600:1900], HELD_BACK[1900:1960] + " " + OOV_TEXT, HELD_BACK[2000:2500]],
            "choice": [{"context": lines[i], "choices": [lines[i + 1], lines[i + 4], lines[i + 7]], "label": 0}
                       for i in range(4)],
            "generate": [{"prompt": lines[i] + "\n", "target": lines[i + 1]} for i in range(4)]}
    (root / "spec.json").write_text(json.dumps(spec))
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(root / "datasets")}
    proc = subprocess.run([sys.executable, str(LM_EVAL_CHECKER), str(root / "spec.json"), str(root)],
                          capture_output=True, text=True, timeout=900, cwd=root, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((root / "report.json").read_text())


def _numbers(resps) -> list[float]:
    if isinstance(resps, (list, tuple)):
        return [x for r in resps for x in _numbers(r)]
    return [float(resps)] if isinstance(resps, (int, float)) else []


@pytest.mark.parametrize("name", ARCHS)
def test_lm_evaluation_harness_runs_every_task(name, lm_eval_report):
    """lm-eval's `hf` backend with no client-side options: rolling log-likelihood, multiple choice
    and generate_until give the same results at batch sizes 1 and 4 (the batch of 4 pads), and the
    multiple-choice log-likelihoods and the generations are the model's own."""
    one, four = lm_eval_report[name]["batch_1"], lm_eval_report[name]["batch_4"]
    assert set(one) == {"ng_rolling", "ng_choice", "ng_generate"}
    for task in ("ng_rolling", "ng_choice"):
        assert all(math.isfinite(x) and x < 0 for x in _numbers(one[task]) if x not in (0.0, 1.0))
        assert _numbers(four[task]) == pytest.approx(_numbers(one[task]), abs=1e-4), task
    direct = lm_eval_report[name]["direct"]
    assert four["ng_generate"] == one["ng_generate"] == [[[text]] for text in direct["generate"]]
    choice = [[pair[0] for [pair] in doc] for doc in one["ng_choice"]]
    assert choice == [pytest.approx(row, abs=1e-4) for row in direct["choice"]]


def test_zero3_export_equals_zero2(checked):
    _, logits = checked
    torch.testing.assert_close(logits["transformer_zero3"], logits["transformer"], atol=1e-4, rtol=0)


def test_bf16_export(checked, exported):
    _, logits = checked
    err = (logits["transformer_bf16"] - logits["transformer"]).abs()
    assert err.max() < 0.1 and err.mean() < 0.02, (err.max(), err.mean())
    assert json.loads((exported["transformer_bf16"] / "config.json").read_text())["dtype"] == "bfloat16"


def test_folder_layout(exported, runs, tmp_path):
    folder = exported["inn"]
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_neurograph.NeuroGraphRecurrentForCausalLM"
    names = {p.name for p in folder.iterdir()}
    assert {"generation_config.json", "tokenizer.json", "model.safetensors", "registry.py", "selective_scan.py"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".cpp"))]  # safetensors only, no pickles
    sharded = tmp_path / "sharded"
    assert export(runs["inn"], sharded, "--max-shard-size", "20KB") == 0
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    merged = {k: v for f in set(index["weight_map"].values()) for k, v in load_file(str(sharded / f)).items()}
    assert merged.keys() == load_file(str(folder / "model.safetensors")).keys()


def test_model_code_is_shipped_as_written_with_flat_imports(exported):
    """Every Python file of an export is a project file, flat: the families and the wrappers from model/,
    the shared kernel modules from kernels/, and each op folder kernels/<op>/ as <op>.py (its dispatch,
    __init__.py) and <op>_<module>.py. Only the relative imports differ, each renamed to a shipped file."""
    shipped = {p.name: p for p in exported["inl"].iterdir() if p.suffix == ".py"}
    assert {"modeling_neurograph.py", "inl.py", "integrator.py", "integrator_reference.py", "registry.py",
            "cpu_extension.py"} <= shipped.keys()
    sources = {p.name: p for p in [*(REPO / "model").glob("*.py"), *(REPO / "kernels").glob("*.py")]}
    for p in (REPO / "kernels").glob("*/*.py"):  # an op folder's files
        sources[(p.parent.name if p.stem == "__init__" else f"{p.parent.name}_{p.stem}") + ".py"] = p
    renamed = 0
    for name, path in shipped.items():
        ours, theirs = sources[name].read_text().splitlines(), path.read_text().splitlines()
        assert len(ours) == len(theirs), name
        for a, b in zip(ours, theirs):
            if a != b:  # `from ..x import n` / `from .m import n` in the op folder -> `from .<shipped> import n`
                assert a.lstrip().startswith("from .") and b.lstrip().startswith("from ."), (name, a, b)
                module = b.split()[1].removeprefix(".")
                assert f"{module}.py" in shipped, (name, b)
                assert b.replace(f".{module} ", "", 1) == re.sub(r"\.+[\w.]* ", "", a, count=1), (name, a, b)
                renamed += 1
    assert renamed > 10  # the op folders' own imports were renamed


def test_bad_input(runs, tmp_path, capsys):
    run = runs["lstm"]
    # a missing checkpoint step, naming it
    assert export(run, tmp_path / "a", "--checkpoint", "999") == 2
    assert "step_00000999" in capsys.readouterr().err
    # nothing is written into a non-empty folder without --overwrite
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export(run, out) == 2
    assert "--overwrite" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["keep.txt"]
    # truncated weight files (consolidated safetensors and DeepSpeed's model shard), naming one
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    tag = (broken / "checkpoints" / "latest").read_text().strip()
    checkpoint = broken / "checkpoints" / tag
    weights = [*checkpoint.glob("*.safetensors"), *checkpoint.glob("*model_states.pt")]
    for f in weights:
        f.write_bytes(f.read_bytes()[:200])
    assert export(broken, tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert "truncated or corrupted" in err and any(str(f) in err for f in weights)
    # an architecture this version does not know
    old = tmp_path / "old"
    shutil.copytree(run, old)
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg["model"]["arch"] = "gru"
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert export(old, tmp_path / "c") == 2
    assert "model.arch: unknown architecture" in capsys.readouterr().err


def test_mlflow_artifact_and_registered_version(runs, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    run = runs[MLFLOW_RUN]
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    run_id = (run / "mlflow_run_id").read_text().strip()
    assert export(run, tmp_path / "hf", "--mlflow") == 0
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "hf_model")}
    assert {"config.json", "model.safetensors", "modeling_neurograph.py", "tokenizer.json"} <= logged
    assert export(run, tmp_path / "hf", "--overwrite", "--register", "tiny-lstm") == 0
    assert client.get_model_version("tiny-lstm", "1").run_id == run_id
    mlflow.set_tracking_uri(f"sqlite:///{run / 'mlflow.db'}")
    assert "python_function" in mlflow.models.get_model_info("models:/tiny-lstm/1").flavors
