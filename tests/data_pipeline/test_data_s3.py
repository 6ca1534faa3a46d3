"""Prepare to and train from s3:// on a local S3-compatible server (moto, on 127.0.0.1 only)."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from neurograph.data_pipeline import StreamingTokenLoader, load_manifest, prepare_corpus, verify


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    port = _free_port()
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                      AWS_DEFAULT_REGION="us-east-1")
    import boto3

    boto3.client("s3").create_bucket(Bucket="corpora")
    yield endpoint
    server.terminate()
    server.wait(timeout=30)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.slow
def test_prepare_to_and_stream_from_s3(s3_server, tmp_path, shakespeare):
    import boto3

    s3 = boto3.client("s3")
    for i in range(3):
        s3.put_object(Bucket="corpora", Key=f"raw/part-{i}.txt", Body=shakespeare[i * 20_000 : (i + 1) * 20_000].encode())
    url = "s3://corpora/prepared/char"
    remote = prepare_corpus(["s3://corpora/raw/*.txt"], url, seq_len=32, samples_per_shard=100)
    assert [s["path"] for s in remote["sources"]] == [f"s3://corpora/raw/part-{i}.txt" for i in range(3)]
    local_copy = tmp_path / "in.txt"
    local_copy.write_text(shakespeare[:60_000])
    assert load_manifest(url)["splits"] == remote["splits"]
    assert verify(url)["samples"] == remote["splits"]["train"]["samples"] + remote["splits"]["val"]["samples"]
    with pytest.raises(ValueError, match="not empty"):
        prepare_corpus(["s3://corpora/raw/part-0.txt"], url, seq_len=32)
    loader = StreamingTokenLoader(url, micro_batch_size=4, num_workers=2, seed=1)
    batches = [b for _, b in zip(range(5), loader)]
    assert all(b.shape == (4, 33) for b in batches)
    # training from the bucket: one process, a few steps, through the CLI as a user runs it
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "neurograph.launch.cli", "train", "--config", "configs/demo.yaml", f"data.path={url}",
           "data.seq_len=32", f"trainer.run_dir={run}", "trainer.num_processes=1", "trainer.max_steps=3",
           "trainer.micro_batch_size=4", "trainer.grad_accum_steps=1", "trainer.eval_every=0", "trainer.checkpoint_every=0",
           "trainer.log_every=1", "tracking.enabled=false", "model.n_layer=1", "model.d_model=32", "model.n_head=2",
           "model.d_ff=64", "data.num_workers=0"]
    done = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "checkpoints" / "latest").exists()
