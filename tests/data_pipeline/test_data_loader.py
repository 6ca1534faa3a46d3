"""StreamingTokenLoader: slot layout, exactly-once, world-size invariance, resume, eval passes,
corrupt shards. Uses the small char-level data dir (seq_len 16, 8 samples per shard)."""
import itertools
import json
import random
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import data_pipeline.loader as loader_mod
from data_pipeline import ShardError, StreamingTokenLoader, iter_split_once, load_manifest, verify

SEED = 7


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def split_samples(data_dir, split="train"):
    """Per shard, its samples' tokens (read in manifest order)."""
    counts = [s["samples"] for s in load_manifest(data_dir)["splits"][split]["shards"]]
    tokens = [t for _, t in iter_split_once(data_dir, split, shuffle=False)]
    firsts = list(itertools.accumulate([0] + counts[:-1]))
    return [tokens[f : f + c] for f, c in zip(firsts, counts)]


def expected_slot_stream(shards, slots, slot, epochs, seed=SEED):
    """The documented layout, recomputed independently of the loader."""
    for epoch in range(epochs):
        order = list(range(len(shards)))
        random.Random(seed * 1000003 + epoch).shuffle(order)
        for shard in order[slot::slots]:
            yield from shards[shard]


class _EpochKeys(IterableDataset):
    """One rank's sample keys for one epoch, split by DataLoader worker."""

    def __init__(self, data_dir, rank, world_size, mb, epoch):
        self.args = dict(rank=rank, world_size=world_size, micro_batch_size=mb, epoch=epoch, seed=SEED)
        self.data_dir = data_dir

    def __iter__(self):
        info = get_worker_info()
        for key, _ in iter_split_once(self.data_dir, "train", worker_index=info.id, num_workers=info.num_workers, **self.args):
            yield info.id, key


@pytest.mark.parametrize("epoch", [0, 1])
def test_two_ranks_two_workers_read_every_sample_exactly_once(small_data, epoch):
    m = load_manifest(small_data)
    all_keys = [f"train-{i:09d}" for i in range(m["splits"]["train"]["samples"])]
    seen, per_reader = Counter(), Counter()
    for rank in (0, 1):
        ds = _EpochKeys(small_data, rank, world_size=2, mb=2, epoch=epoch)
        for worker, key in DataLoader(ds, batch_size=None, num_workers=2):
            seen[key] += 1
            per_reader[rank, worker] += 1
    assert sorted(seen) == all_keys and set(seen.values()) == {1}
    assert sorted(per_reader) == [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
@pytest.mark.parametrize("workers", [0, 2, 4])
def test_rows_follow_the_slot_layout_across_epochs(small_data, workers):
    shards = split_samples(small_data)
    mb, world, rank, n = 4, 2, 1, 130  # a slot holds ~10 shards x 8 samples per epoch: n crosses an epoch
    batches = take(StreamingTokenLoader(small_data, micro_batch_size=mb, rank=rank, world_size=world,
                                        num_workers=workers, seed=SEED), n)
    assert all(b.shape == (mb, 17) and b.dtype == torch.int64 for b in batches)
    for j in range(mb):
        expected = list(itertools.islice(expected_slot_stream(shards, mb * world, rank * mb + j, 3), n))
        got = [b[j].numpy() for b in batches]
        assert all(np.array_equal(e, g) for e, g in zip(expected, got)), f"row {j}"


def test_world_size_invariance(small_data):
    n = 260  # > 2 epochs of a slot
    single = take(StreamingTokenLoader(small_data, micro_batch_size=4, seed=SEED), n)
    rank0 = take(StreamingTokenLoader(small_data, micro_batch_size=2, rank=0, world_size=2, seed=SEED), n)
    rank1 = take(StreamingTokenLoader(small_data, micro_batch_size=2, rank=1, world_size=2, num_workers=2, seed=SEED), n)
    for k in range(n):
        assert torch.equal(torch.cat([rank0[k], rank1[k]]), single[k]), f"micro-batch {k}"


@pytest.mark.parametrize("k", [25, 170])  # mid-epoch, and after a slot's epoch boundary
def test_resume_equals_uninterrupted(small_data, k):
    kwargs = dict(micro_batch_size=2, rank=1, world_size=2, seed=SEED)
    full = take(StreamingTokenLoader(small_data, num_workers=2, **kwargs), k + 15)
    first = StreamingTokenLoader(small_data, num_workers=2, **kwargs)
    head = take(first, k)
    state = json.loads(json.dumps(first.state_dict()))
    assert state["micro_batches"] == k and state["slots"] == 4 and state["seed"] == SEED
    for workers in (2, 0):
        resumed = StreamingTokenLoader(small_data, num_workers=workers, **kwargs)
        resumed.load_state_dict(state)
        tail = take(resumed, 15)
        assert all(torch.equal(a, b) for a, b in zip(head + tail, full))
        assert resumed.state_dict()["micro_batches"] == k + 15


def test_resume_skips_without_reading_skipped_or_foreign_shards(small_data, monkeypatch):
    opened = []
    real = loader_mod.read_shard
    monkeypatch.setattr(loader_mod, "read_shard", lambda plan, shard, skip=0: (opened.append((shard, skip)), real(plan, shard, skip))[1])
    loader = StreamingTokenLoader(small_data, micro_batch_size=2, rank=1, world_size=2, seed=SEED)
    loader.load_state_dict({**loader.state_dict(), "micro_batches": 45})
    take(loader, 1)
    plan = loader._plan
    expected = []
    for slot in (2, 3):
        epoch, index, offset = plan.position(slot, 45)
        assert epoch == 0 and index == 45 // 8 and offset == 45 % 8
        expected.append((plan.slot_shards(slot, 0)[index], offset))
    assert opened == expected  # one shard per own slot, entered at the right offset


def test_state_mismatch_and_config_errors(small_data, tmp_path):
    state = StreamingTokenLoader(small_data, micro_batch_size=2, world_size=2).state_dict()
    with pytest.raises(ValueError, match="saved with 4 streams.*this run has 2"):
        StreamingTokenLoader(small_data, micro_batch_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        StreamingTokenLoader(small_data, micro_batch_size=2, world_size=2, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match=r"data.num_workers=3 must divide trainer.micro_batch_size=4"):
        StreamingTokenLoader(small_data, micro_batch_size=4, num_workers=3)
    n_val = len(load_manifest(small_data)["splits"]["val"]["shards"])
    with pytest.raises(ValueError, match=rf"val split .* has {n_val} shards .* need at least 16.*--samples-per-shard"):
        StreamingTokenLoader(small_data, "val", micro_batch_size=8, world_size=2)
    with pytest.raises(ValueError, match="prepared seq_len 16"):
        StreamingTokenLoader(small_data, micro_batch_size=1, seq_len=17)
    with pytest.raises(FileNotFoundError):
        StreamingTokenLoader(tmp_path, micro_batch_size=1)


def test_shorter_seq_len_crops(small_data):
    full = take(StreamingTokenLoader(small_data, micro_batch_size=2, seed=SEED), 5)
    short = take(StreamingTokenLoader(small_data, micro_batch_size=2, seed=SEED, seq_len=8), 5)
    assert all(s.shape == (2, 9) and torch.equal(s, f[:, :9]) for s, f in zip(short, full))


def test_eval_pass_is_finite_and_equal_across_ranks(small_data):
    shards = split_samples(small_data, "val")
    loaders = [StreamingTokenLoader(small_data, "val", micro_batch_size=2, rank=r, world_size=2, shuffle=False, loop=False,
                                    num_workers=w) for r, w in ((0, 0), (1, 2))]
    slot_lengths = [sum(len(shards[i]) for i in range(s, len(shards), 4)) for s in range(4)]
    passes = [list(l) for l in loaders]
    assert [len(p) for p in passes] == [min(slot_lengths)] * 2 == [l.num_batches for l in loaders]
    # every row is a distinct validation sample
    rows = [tuple(r.tolist()) for p in passes for b in p for r in b]
    assert len(set(rows)) == len(rows)
    valid = {tuple(t.tolist()) for s in shards for t in s}
    assert set(rows) <= valid
    again = list(loaders[0])  # a new pass starts over
    assert all(torch.equal(a, b) for a, b in zip(again, passes[0])) and len(again) == len(passes[0])
    capped = StreamingTokenLoader(small_data, "val", micro_batch_size=2, shuffle=False, loop=False, max_batches=3)
    assert len(list(capped)) == 3 == capped.num_batches


@pytest.fixture
def data_copy(small_data, tmp_path):
    return shutil.copytree(small_data, tmp_path / "copy")


# Each member of a shard: a 512-byte tar header, then 512 bytes holding the 162-byte .npy
# (128-byte npy header + 17 uint16 tokens) and zero padding.
CORRUPTIONS = {  # where: (offset(size), length, what the loader reports)
    "middle": (lambda size: size // 2, 300, "holds 5 samples but the manifest says 8"),  # tar header hit: stream ends early
    "tokens": (lambda size: 3 * 1024 + 512 + 130, 6, "token id 65535 >= vocab_size"),
    "padding": (lambda size: 3 * 1024 + 512 + 300, 8, "fails its sha256 check"),  # only the hash sees this
}


@pytest.mark.parametrize("where,workers", [("middle", 0), ("middle", 2), ("tokens", 0), ("padding", 2)])
def test_corrupt_shard_names_the_file(data_copy, where, workers):
    bad = data_copy / "val-000003.tar"
    raw = bytearray(bad.read_bytes())
    offset, length, reason = CORRUPTIONS[where]
    start = offset(len(raw))
    raw[start : start + length] = b"\xff" * length
    bad.write_bytes(bytes(raw))
    # slot 1 reads shards 1, 3, 5, 7, 9 (the short last shard makes it the shortest slot: read to the end)
    loader = StreamingTokenLoader(data_copy, "val", micro_batch_size=2, shuffle=False, loop=False, num_workers=workers)
    with pytest.raises(ShardError, match=f"val-000003.tar.*{reason}"):
        list(loader)
    with pytest.raises(ShardError, match="val-000003.tar: sha256 mismatch"):
        verify(data_copy)


@pytest.mark.parametrize("keep", [0.5, 512 * 9, -700])
def test_truncated_shard_names_the_file(data_copy, keep):
    bad = data_copy / "val-000002.tar"
    raw = bad.read_bytes()
    cut = int(len(raw) * keep) if isinstance(keep, float) else (keep if keep > 0 else len(raw) + keep)
    bad.write_bytes(raw[:cut])
    loader = StreamingTokenLoader(data_copy, "val", micro_batch_size=1, shuffle=False, loop=False)
    with pytest.raises(ShardError, match="val-000002.tar"):
        list(loader)
    with pytest.raises(ShardError, match="val-000002.tar: .* bytes, the manifest says"):
        verify(data_copy)
