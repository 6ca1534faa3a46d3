"""The `prepare` and `verify` subcommands through argparse."""
import argparse

from data_pipeline import load_manifest
from data_pipeline.cli import add_data_commands


def _run(argv):
    parser = argparse.ArgumentParser(prog="neurograph data")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_prepare_then_verify(tmp_path, shakespeare, capsys):
    a, b = tmp_path / "a.txt", tmp_path / "b.jsonl"
    a.write_text(shakespeare[:30_000])
    b.write_text('{"body": "Second document, from JSON lines."}\n')
    out = tmp_path / "data"
    _run(["prepare", "--input", str(a), str(b), "--out", str(out), "--tokenizer", "sentencepiece", "--vocab-size", "400",
          "--sp-model-type", "unigram", "--seq-len", "32", "--val-fraction", "0.1", "--samples-per-shard", "16",
          "--seed", "3", "--jsonl-field", "body"])
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"prepared {out}: sentencepiece vocab 400, seq_len 32, train ") and "\n" not in line
    m = load_manifest(out)
    assert [s["documents"] for s in m["sources"]] == [1, 1] and m["seed"] == 3
    _run(["verify", "--data", str(out)])
    shards = len(m["splits"]["train"]["shards"]) + len(m["splits"]["val"]["shards"])
    assert capsys.readouterr().out.strip().startswith(f"verified {out}: {shards} shards")
