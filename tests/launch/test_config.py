"""Bad configurations fail before any process starts, naming the field and what is allowed."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from neurograph.launch.config import ConfigError, load_config


def base_config(data_dir) -> dict:
    return {
        "model": {"arch": "transformer", "d_model": 32, "n_layer": 2, "n_head": 2, "d_ff": 64, "max_seq_len": 64},
        "data": {"path": str(data_dir), "seq_len": 64},
        "trainer": {"max_steps": 3, "micro_batch_size": 4, "run_dir": "runs/x"},
    }


def write(tmp_path, raw) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_valid_config_takes_vocab_from_manifest(char_data, tmp_path):
    cfg = load_config(write(tmp_path, base_config(char_data)), ["trainer.lr=3e-4", "deepspeed.zero_stage=3"])
    from neurograph.data_pipeline import load_manifest

    assert cfg.model.vocab_size == load_manifest(char_data)["tokenizer"]["vocab_size"]
    assert cfg.trainer.lr == pytest.approx(3e-4)
    assert cfg.deepspeed.zero_stage == 3


BAD = [
    # (overrides, field named in the error, words of the explanation)
    (["trainer.max_stpes=3"], "trainer.max_stpes", "unknown key; allowed keys:"),
    (["bogus.x=1"], "bogus", "unknown key"),
    (["model.d_modle=64"], "model.d_modle", "allowed keys: arch, bias, d_ff, d_model"),
    (["trainer.max_steps=many"], "trainer.max_steps", "valid integer"),
    (["deepspeed.zero_stage=4"], "deepspeed.zero_stage", "0, 1, 2 or 3"),
    (["trainer.lr=-1e-3"], "trainer.lr", "greater than 0"),
    (["data.seq_len=128", "model.max_seq_len=96"], "data.seq_len", "exceeds the prepared sequence length 64"),
    (["model.max_seq_len=32"], "data.seq_len", "exceeds the model context model.max_seq_len=32"),
    (["data.path=/nonexistent/dir"], "data.path", "/nonexistent/dir"),
    (["model.arch=gpt9"], "model.arch", "registered: "),
    (["trainer.precision=fp8"], "trainer.precision", "'fp32' or 'bf16'"),
    (["launcher.kind=slurm"], "launcher.kind", "'local' or 'ray'"),
    (["data.on_corrupt=ignore"], "data.on_corrupt", "'fail' or 'skip'"),
    (["data.mixture=[{path: /nonexistent/mix, weight: 1}]"], "data.mixture.0.path", "/nonexistent/mix"),
    (["data.mixture=[{path: /x, weight: 0}]"], "data.mixture.0.weight", "greater than 0"),
    (["data.path=null"], "data", "set data.path or data.mixture"),
    (["model.vocab_size=5"], "model.vocab_size", "smaller than the tokenizer's"),
    (["trainer.grad_accum_steps=0"], "trainer.grad_accum_steps", "greater than 0"),
    (["model.n_head=5"], "model", "d_model 32 is not divisible by n_head 5"),
    (["trainer.schedule=linear"], "trainer.schedule", "'cosine', 'onecycle' or 'constant'"),
    (["trainer.activation_checkpointing=selective"], "trainer.activation_checkpointing",
     "selective is not supported by model.arch=transformer; use none, layers or every_k"),
]


@pytest.mark.parametrize("overrides,field,words", BAD, ids=[b[1] + ":" + b[0][-1] for b in BAD])
def test_bad_config_names_the_field(char_data, tmp_path, overrides, field, words):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, base_config(char_data)), overrides)
    message = str(err.value)
    assert f"{field}:" in message, message
    assert words in message, message


def test_malformed_override_and_missing_file(tmp_path, char_data):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(write(tmp_path, base_config(char_data)), ["trainer.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_cli_rejects_bad_config_before_starting_processes(char_data, tmp_path):
    """Exit code 2 and the field on stderr; no run directory is created."""
    raw = base_config(char_data)
    raw["trainer"]["run_dir"] = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "neurograph.launch.cli", "train", "--config", write(tmp_path, raw),
                           "deepspeed.zero_stage=4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "deepspeed.zero_stage" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_showing_a_config_needs_no_data(tmp_path, monkeypatch, capsys):
    """`config show` and `model summary` work before the data exist (and say where the vocabulary will
    come from); `train` still refuses the same config, naming the missing data."""
    import json

    from neurograph.launch.cli import main

    from ..conftest import REPO

    monkeypatch.chdir(tmp_path)  # configs/demo.yaml's data.path (runs/demo/data) does not exist here
    demo = str(REPO / "configs" / "demo.yaml")
    assert main(["config", "show", "--config", demo, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model.vocab_size"]["value"] == "unset: the tokenizer of the prepared data at runs/demo/data decides"
    assert shown["trainer.max_steps"]["value"] == yaml.safe_load(open(demo))["trainer"]["max_steps"]
    assert main(["model", "summary", "--config", demo, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["vocab_size"] == 256 and summary["total"] > 0
    assert main(["train", "--config", demo]) == 2
    assert "data.path: data directory runs/demo/data does not exist" in capsys.readouterr().err
