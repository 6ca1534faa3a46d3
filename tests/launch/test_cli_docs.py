"""The CLI documents itself: help on every option, examples on every command, `config show`
from the pydantic models, and README's config reference generated from the same models."""
from __future__ import annotations

import argparse
import json
import re

import pytest
import yaml

from neurograph.launch.cli import build_parser, main
from neurograph.launch.cli_docs import _subcommands, is_leaf
from neurograph.launch.config import NeuroGraphConfig
from neurograph.launch.config_doc import README_BEGIN, readme_block
from neurograph.model import config_fields, model_spec, registered_architectures
from tests.conftest import REPO
from tests.trainer.runs import TINY_TRANSFORMER


def test_every_option_has_help_and_every_command_examples():
    parser = build_parser()
    missing = []
    for path, sub in _subcommands(parser):
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"neurograph {path} {'/'.join(action.option_strings) or action.dest}: no help text")
        if is_leaf(sub) and not re.search(r"^examples?:", sub.epilog or "", re.M):
            missing.append(f"neurograph {path}: no examples at the end of --help")
    assert not missing, "\n".join(missing)


def test_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "(default: 200)" in out and "(default: latest)" in out
    assert out.rstrip().splitlines()[-2].strip().startswith("neurograph generate --run")


def test_config_show_json_lists_every_key_with_its_default(capsys):
    assert main(["config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    for section in ("data", "trainer", "deepspeed", "tracking", "launcher"):
        for key in NeuroGraphConfig.model_fields[section].annotation.model_fields:
            if key == "ray":
                continue
            assert f"{section}.{key}" in shown, key
    for arch in registered_architectures():
        for key in config_fields(model_spec(arch).config_cls):
            assert f"model[{arch}].{key}" in shown
    assert shown["trainer.log_every"]["default"] == 10
    assert shown["trainer.betas"]["default"] == [0.9, 0.95]
    assert shown["launcher.ray.num_workers"] == {"type": "int", "default": 2, "required": False, "allowed": "> 0",
                                                 "description": "Ray Train workers (data-parallel ranks)"}
    assert shown["deepspeed.zero_stage"]["allowed"] == "0, 1, 2, 3"
    assert shown["data.seq_len"]["description"].startswith("tokens per training sequence")


def test_config_show_resolves_a_config_with_overrides(tmp_path, char_data, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": TINY_TRANSFORMER, "data": {"path": str(char_data), "seq_len": 64}}))
    assert main(["config", "show", "--config", str(path), "trainer.lr=0.001", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["trainer.lr"]["value"] == 0.001 and shown["trainer.lr"]["default"] == 3e-4
    assert shown["model.d_model"]["value"] == 48
    assert shown["model.vocab_size"]["value"] > 0  # taken from the data
    assert main(["config", "show", "--config", str(path)]) == 0
    text = capsys.readouterr().out
    assert "trainer.lr = 0.0003\n" in text and "steps between checkpoints (0: only at the end)" in text
    assert main(["config", "show", "--config", str(path), "deepspeed.zero_stage=4"]) == 2
    assert "deepspeed.zero_stage" in capsys.readouterr().err


def test_readme_config_reference_is_up_to_date():
    readme = (REPO / "README.md").read_text()
    assert README_BEGIN in readme, "README.md lacks the generated config reference"
    assert readme_block() in readme, "README's config reference is out of date: run `python -m neurograph.launch.config_doc README.md`"
