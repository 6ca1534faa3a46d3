"""StreamingTokenLoader and the global sample order: exactly once per epoch, world-size and worker
invariance, resume (also with another world size), evaluation passes, mixtures, corrupt shards.
Uses numbered synthetic datasets (sample i holds token i) so batches name their samples."""
import itertools
import logging
from collections import Counter

import numpy as np
import pytest
import torch

from neurograph.data_pipeline import IGNORE_INDEX, ShardError, StreamingTokenLoader
from neurograph.data_pipeline.errors import DataError
from neurograph.data_pipeline.order import MixtureSchedule, SplitOrder

from .datasets import SEQ_LEN, ids, numbered_dataset

SEED = 7
COUNTS = [5, 9, 2, 7, 7, 3, 8, 1, 6, 4, 5]  # 57 samples in 11 shards of uneven sizes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return numbered_dataset(tmp_path_factory.mktemp("numbered"), COUNTS, val_counts=[4, 7, 2])


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def stream(loader_kwargs, data, n_batches, world):
    """The global stream (sample ids by position) read by `world` ranks."""
    per_rank = [take(StreamingTokenLoader(data, rank=r, world_size=world, seed=SEED, **loader_kwargs), n_batches)
                for r in range(world)]
    return [i for k in range(n_batches) for r in range(world) for i in ids(per_rank[r][k])]


def test_order_is_a_permutation_per_epoch_shuffled_within_windows():
    order = SplitOrder(COUNTS, seed=SEED, shuffle=True, window=3)
    total = sum(COUNTS)
    firsts = np.concatenate([[0], np.cumsum(COUNTS)[:-1]])
    for epoch in (0, 1):
        shards, offsets = order.locate(np.arange(epoch * total, (epoch + 1) * total))
        assert sorted(firsts[shards] + offsets) == list(range(total))
        # a window of 3 shards is read before the next starts: each position's shard is in its window
        shard_seq = [int(s) for s in shards]
        windows = [set(shard_seq[a:b]) for a, b in zip([0] + _window_ends(order, epoch)[:-1], _window_ends(order, epoch))]
        assert all(len(w) <= 3 for w in windows) and set().union(*windows) == set(range(len(COUNTS)))
    assert not np.array_equal(order.locate(np.arange(total))[0], order.locate(np.arange(total, 2 * total))[0])
    unshuffled = SplitOrder(COUNTS, seed=SEED, shuffle=False, window=3)
    s, o = unshuffled.locate(np.arange(total))
    assert list(firsts[s] + o) == list(range(total))


def _window_ends(order, epoch):
    return [int(e) for e in order._windows(epoch)[0]]


@pytest.mark.parametrize("mb,world,workers", [(1, 1, 0), (4, 1, 2), (2, 2, 0), (1, 3, 2), (3, 2, 2)])
def test_every_sample_once_per_epoch_and_one_global_stream(data, mb, world, workers):
    total = sum(COUNTS)
    n = -(-2 * total // (mb * world))  # two epochs
    got = stream(dict(micro_batch_size=mb, num_workers=workers), data, n, world)
    reference = stream(dict(micro_batch_size=1), data, len(got), 1)
    assert got == reference  # the same global order whatever the world size, rows or workers
    assert Counter(got[:total]) == Counter(range(total)) == Counter(got[total : 2 * total])


def test_resume_mid_epoch_two_ranks_two_workers(data):
    kwargs = dict(micro_batch_size=2, world_size=2, num_workers=2, seed=SEED)
    for rank in (0, 1):
        full = take(StreamingTokenLoader(data, rank=rank, **kwargs), 40)
        first = StreamingTokenLoader(data, rank=rank, **kwargs)
        head = take(first, 11)
        state = first.state_dict()
        assert state["consumed"] == 11 * 4
        resumed = StreamingTokenLoader(data, rank=rank, **kwargs)
        resumed.load_state_dict(state)
        assert all(torch.equal(a, b) for a, b in zip(head + take(resumed, 29), full))


def test_resume_with_another_world_size_continues_the_global_order(data):
    two = [StreamingTokenLoader(data, micro_batch_size=2, rank=r, world_size=2, seed=SEED) for r in range(2)]
    heads = [take(loader, 9) for loader in two]
    uninterrupted = stream(dict(micro_batch_size=2), data, 9 + 20, 2)
    one = StreamingTokenLoader(data, micro_batch_size=4, seed=SEED)
    one.load_state_dict(two[0].state_dict())
    tail = [i for b in take(one, 20) for i in ids(b)]
    assert [i for k in range(9) for r in range(2) for i in ids(heads[r][k])] + tail == uninterrupted


def test_changed_global_batch_warns_and_continues_from_the_same_sample(data, caplog):
    small = StreamingTokenLoader(data, micro_batch_size=3, seed=SEED)
    take(small, 5)
    bigger = StreamingTokenLoader(data, micro_batch_size=4, seed=SEED)
    with caplog.at_level(logging.WARNING):
        bigger.load_state_dict(small.state_dict())
    assert "global batch changed from 3 to 4" in caplog.text
    reference = stream(dict(micro_batch_size=1), data, 15 + 8, 1)
    assert ids(take(bigger, 2)[1]) == reference[15 + 4 : 15 + 8]


def test_state_errors(data, tmp_path):
    state = StreamingTokenLoader(data, micro_batch_size=2, seed=SEED).state_dict()
    with pytest.raises(DataError, match="seed"):
        StreamingTokenLoader(data, micro_batch_size=2, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="older loader"):
        StreamingTokenLoader(data, micro_batch_size=2, seed=SEED).load_state_dict({"slots": 4, "micro_batches": 3})
    with pytest.raises(DataError, match="prepared seq_len 4"):
        StreamingTokenLoader(data, micro_batch_size=1, seq_len=5)
    with pytest.raises(FileNotFoundError):
        StreamingTokenLoader(tmp_path, micro_batch_size=1)


def test_shorter_seq_len_crops(data):
    full = take(StreamingTokenLoader(data, micro_batch_size=2, seed=SEED), 3)
    short = take(StreamingTokenLoader(data, micro_batch_size=2, seed=SEED, seq_len=2), 3)
    assert all(s.shape == (2, 3) and torch.equal(s, f[:, :3]) for s, f in zip(short, full))
    assert full[0].shape == (2, SEQ_LEN + 1) and full[0].dtype == torch.int64


@pytest.mark.parametrize("mb,world,workers", [(2, 2, 0), (4, 3, 2), (64, 1, 0)])
def test_eval_pass_counts_every_sample_once(data, mb, world, workers):
    passes = [list(StreamingTokenLoader(data, "val", micro_batch_size=mb, rank=r, world_size=world, loop=False,
                                        num_workers=workers)) for r in range(world)]
    assert len({len(p) for p in passes}) == 1  # every rank runs the same number of batches
    rows = [i for p in passes for b in p for i in ids(b)]
    assert Counter(i for i in rows if i != IGNORE_INDEX) == Counter(range(13))
    assert rows.count(IGNORE_INDEX) < mb * world
    loader = StreamingTokenLoader(data, "val", micro_batch_size=mb, loop=False)
    assert [ids(b) for b in loader] == [ids(b) for b in loader]  # a new pass starts over
    capped = StreamingTokenLoader(data, "val", micro_batch_size=1, loop=False, max_batches=3)
    assert len(list(capped)) == 3 == capped.num_batches


def test_mixture_proportions_and_invariance(tmp_path):
    a = numbered_dataset(tmp_path / "a", [500, 300])
    b = numbered_dataset(tmp_path / "b", [40, 60, 100])
    mixture = [(str(a), 3.0), (str(b), 1.0)]
    one = StreamingTokenLoader(mixture, micro_batch_size=100, seed=SEED)
    take(one, 100)  # 10k samples
    share = one.proportions()
    assert abs(share[str(a)] - 0.75) < 0.01 and abs(share[str(b)] - 0.25) < 0.01
    # the blend is world-size invariant and resumable like a single dataset
    ref = [i for bt in take(StreamingTokenLoader(mixture, micro_batch_size=4, seed=SEED), 30) for i in ids(bt)]
    two = [StreamingTokenLoader(mixture, micro_batch_size=2, rank=r, world_size=2, num_workers=2, seed=SEED) for r in range(2)]
    halves = [take(loader, 12) for loader in two]
    resumed = StreamingTokenLoader(mixture, micro_batch_size=4, seed=SEED)
    resumed.load_state_dict(two[1].state_dict())
    got = [i for k in range(12) for r in range(2) for i in ids(halves[r][k])] + [i for bt in take(resumed, 18) for i in ids(bt)]
    assert got == ref
    schedule = MixtureSchedule([3.0, 1.0], SEED)
    src, ordinal = schedule.assign(np.arange(1000, 1200))
    before = schedule.counts_before(1000)
    for s in (0, 1):  # ordinals continue each source's count
        assert list(ordinal[src == s]) == list(range(before[s], before[s] + int((src == s).sum())))


def test_corrupt_shard_fails_before_use_or_is_skipped(tmp_path):
    data = numbered_dataset(tmp_path / "d", [6, 6, 6])
    bad = data / "train-000001.tar"
    raw = bytearray(bad.read_bytes())
    raw[512 + 128 + 4 * 5 * 2] ^= 0x01  # one bit of a token of sample 2 of that shard
    bad.write_bytes(bytes(raw))
    loader = StreamingTokenLoader(data, micro_batch_size=1, seed=SEED, shuffle=False)
    seen = []
    with pytest.raises(ShardError, match="train-000001.tar fails its sha256 check"):
        for batch in loader:
            seen.extend(ids(batch))
    assert not set(seen) & set(range(6, 12))  # nothing of the bad shard was handed out
    skipping = StreamingTokenLoader(data, micro_batch_size=1, seed=SEED, on_corrupt="skip")
    assert skipping.skipped_shards == [f"{data}/train-000001.tar"]
    got = [i for b in take(skipping, 24) for i in ids(b)]
    assert Counter(got) == Counter(list(range(6)) * 2 + list(range(12, 18)) * 2)
