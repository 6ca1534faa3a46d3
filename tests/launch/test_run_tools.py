"""One trained run (2 processes, ZeRO-3, 5 steps) and what a user does with it: reads a quiet
log, evaluates it, samples from it into a file, fine-tunes from its weights."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from neurograph.launch.cli import main
from neurograph.launch.inference import encode_prompt, load_trained_model
from tests.trainer.runs import read_metrics, train, train_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, char_data):
    """(run directory, the training command's stdout, stderr)."""
    tmp = tmp_path_factory.mktemp("trained")
    cmd = train_command(tmp, char_data, "run", "trainer.num_processes=2", "deepspeed.zero_stage=3",
                        "trainer.max_steps=5", "trainer.log_every=1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return tmp / "run", proc.stdout, proc.stderr


def test_zero3_run_logs_once_to_stderr_without_warnings(trained):
    _, stdout, stderr = trained
    assert stdout == ""  # logs go to stderr
    assert "FutureWarning" not in stderr and "built successfully" not in stderr, stderr
    lines = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in stderr.splitlines() if line.strip()]
    repeated = {line for line in lines if lines.count(line) > 1}
    assert not repeated, stderr
    assert sum("step      5/5" in line for line in lines) == 1


def test_eval_reproduces_the_last_logged_val_loss(trained, capsys):
    run, _, _ = trained
    assert main(["eval", "--run", str(run)]) == 0
    result = json.loads(capsys.readouterr().out)
    last = read_metrics(run)[-1]
    assert abs(result["val/loss"] - last["val/loss"]) < 1e-5, (result, last)
    assert abs(result["val/bpc"] - last["val/bpc"]) < 1e-5


def test_generate_writes_only_the_text_to_stdout(trained, tmp_path):
    run, _, _ = trained
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}  # as a user's shell has it
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.run([sys.executable, "-m", "neurograph.launch.cli", "generate", "--run", str(run), "--prompt", "ROMEO:",
                               "--max-new-tokens", "40"], stdout=out, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=tmp_path, timeout=300)  # from another directory
    assert proc.returncode == 0, proc.stderr
    model, tokenizer, _ = load_trained_model(run)
    ids = model.generate(encode_prompt(tokenizer, "ROMEO:"), 40, temperature=0.8, do_sample=True,
                         generator=torch.Generator().manual_seed(0))
    assert (tmp_path / "out.txt").read_text() == tokenizer.decode(ids[0].tolist()) + "\n"


def test_prompt_with_unknown_symbols_names_them(trained, caplog):
    """Characters outside the vocabulary are read as UNK (data prepared with defaults have one) and named."""
    run, _, _ = trained
    assert main(["generate", "--run", str(run), "--prompt", "ROMEO: \u2603", "--max-new-tokens", "4"]) == 0
    assert "--prompt: ['\u2603'] not in the vocabulary, read as <unk>" in caplog.text


def test_init_from_starts_at_step_0_with_the_given_weights(trained, tmp_path, char_data):
    run, _, _ = trained
    common = ("trainer.num_processes=1", "deepspeed.zero_stage=0", "trainer.seed=99", "trainer.schedule=constant",
              "trainer.warmup_steps=0")
    records = train(tmp_path, char_data, "ft", *common, "trainer.max_steps=1", "trainer.lr=1e-9", "--init-from", str(run))
    assert [r["step"] for r in records] == [1]
    source = load_trained_model(run)[0].state_dict()
    tuned = load_trained_model(tmp_path / "ft")[0].state_dict()
    assert max((source[k] - tuned[k]).abs().max().item() for k in source) < 1e-6  # one step of lr 1e-9

    cmd = train_command(tmp_path, char_data, "bad", *common, "model.d_model=32", "--init-from", f"{run}:5")
    assert main(cmd[3:]) == 2  # checked before anything starts
