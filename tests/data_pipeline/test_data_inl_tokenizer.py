"""The prepare command that configs/inl_1.1b.yaml names produces its 50,261-token vocabulary."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neurograph.data_pipeline import load_manifest, load_tokenizer

from ..conftest import REPO, SHARED_DATA


@pytest.mark.slow
def test_inl_1_1b_prepare_command_gives_its_vocabulary(tmp_path):
    config = (REPO / "configs" / "inl_1.1b.yaml").read_text()
    command = re.search(r"^# +(neurograph data prepare .*?)$", config, re.M).group(1)
    args = shlex.split(command)[1:]
    corpus = SHARED_DATA / "brown.txt.xz"  # 6 MB of real text: enough merges for a GPT-2-size vocabulary
    args[args.index("--input") + 1] = str(corpus)
    args[args.index("--out") + 1] = str(tmp_path / "data")
    subprocess.run([sys.executable, "-m", "neurograph.launch.cli", *args, "--workers", "2"], check=True, cwd=REPO, timeout=900)
    m = load_manifest(tmp_path / "data")
    vocab = yaml.safe_load(config)["model"]["vocab_size"]
    assert m["tokenizer"]["vocab_size"] == vocab == 50_261 and m["tokenizer"]["kind"] == "bpe"
    tok = load_tokenizer(tmp_path / "data")
    assert list(tok.special_tokens) == ["<|endoftext|>", "<USER>", "<ASSISTANT>", "<SYSTEM>", "<ERROR>"]
    text = "<USER> Where is the <ERROR> line?\n<ASSISTANT> Here."
    assert tok.decode(tok.encode(text)) == text
    assert Path(tmp_path / "data" / "hf_tokenizer.json").is_file()
