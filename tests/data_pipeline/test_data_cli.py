"""The `data prepare` and `data verify` commands through the CLI's own parser."""
import pytest

from neurograph.data_pipeline import load_manifest, verify
from neurograph.launch.cli import build_parser


def _run(argv):
    args = build_parser().parse_args(["data", *argv])
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


def _cli(*args, cwd=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "neurograph.launch.cli", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_bad_prepare_inputs_are_one_line_errors_and_keep_the_data(tmp_path, shakespeare):
    good = tmp_path / "good.txt"
    good.write_text(shakespeare[:20_000])
    out = tmp_path / "data"
    assert _cli("data", "prepare", "--input", str(good), "--out", str(out), "--seq-len", "16").returncode == 0
    empty, binary, jsonl = tmp_path / "empty.txt", tmp_path / "blob.txt", tmp_path / "bad.jsonl"
    empty.write_text("")
    binary.write_bytes(bytes(range(256)) * 50)
    jsonl.write_text('{"text": "ok"}\n{oops\n')
    cases = [([str(tmp_path / "missing.txt")], "does not exist"), ([str(empty)], "is empty"),
             ([str(binary)], "is binary"), ([str(jsonl)], "bad.jsonl:2: invalid JSON"),
             ([str(good), "--seq-len", "100000"], "gets no sample")]
    for inputs, message in cases:
        done = _cli("data", "prepare", "--out", str(out), "--overwrite", "--seq-len", "16", "--input", *inputs)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert message in done.stderr.strip().splitlines()[-1] and done.stderr.count("error:") == 1
        assert verify(out)["samples"] > 0  # the old dataset survived
    refused = _cli("data", "prepare", "--input", str(good), "--out", str(out))
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    (out / "train-000000.tar").write_bytes(b"x" * 100)
    broken = _cli("data", "verify", "--data", str(out))
    assert broken.returncode == 2 and "train-000000.tar" in broken.stderr and "Traceback" not in broken.stderr


@pytest.mark.slow
def test_prepare_memory_is_flat_in_the_corpus_size(tmp_path, shakespeare):
    import subprocess
    import sys

    big = tmp_path / "big.txt"
    with open(big, "w") as f:
        for _ in range(200_000_000 // len(shakespeare) + 1):  # ~200 MB from the real text, repeated
            f.write(shakespeare)
    # The peak of the prepare process and its workers alone, measured by a fresh parent: pytest's own
    # RUSAGE_CHILDREN would also count every earlier child of the session (a C++ kernel build: 1.5 GB).
    measure = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); sys.exit(done.returncode)")
    done = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "neurograph.launch.cli", "data", "prepare",
                           "--input", str(big), "--out", str(tmp_path / "data"), "--workers", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    peak = int(done.stdout.strip().splitlines()[-1])
    assert peak < 1 << 30, f"peak RSS {peak / 2**20:.0f} MB"
