"""`StreamingTokenLoader`: one rank's micro-batches from a prepared split, streamed from its own
shards, resumable from a small state dict, and the same global batch whatever the world size.

Layout. The global micro-batch has `slots = micro_batch_size * world_size` rows. In epoch e the
split's shards are shuffled with `random.Random(seed * 1000003 + e)` (or kept in order) and shard
i is dealt to slot i % slots. A slot's stream is its shards in that order, samples in file order,
then its shards of epoch e+1, and so on. Rank r owns slots [r*mb, (r+1)*mb); row j of its
micro-batch k is sample k of slot r*mb+j. DataLoader worker w of W serves the rank's slots
j = w (mod W); items arrive round-robin by worker, so mb consecutive items are rows 0..mb-1.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .manifest import TOKEN_FIELD, ShardError, load_manifest, sample_key

STATE_VERSION = 1


@dataclass(frozen=True)
class _Plan:
    """Everything a worker needs to read its slots (picklable, no open files)."""

    data_dir: str
    split: str
    files: tuple[str, ...]
    counts: tuple[int, ...]
    sizes: tuple[int, ...]
    sha256: tuple[str, ...]
    firsts: tuple[int, ...]  # split-wide index of each shard's first sample
    dtype: str
    prepared_len: int  # tokens per stored sample (prepared seq_len + 1)
    sample_len: int  # tokens per returned row (seq_len + 1)
    vocab_size: int
    slots: int
    seed: int
    shuffle: bool

    @classmethod
    def from_manifest(cls, data_dir, manifest: dict, split: str, slots: int, seq_len: int, seed: int, shuffle: bool) -> "_Plan":
        if split not in manifest["splits"]:
            raise ValueError(f"{data_dir} has no split {split!r}; splits: {', '.join(manifest['splits'])}")
        shards = manifest["splits"][split]["shards"]
        counts = tuple(int(s["samples"]) for s in shards)
        return cls(
            data_dir=str(data_dir), split=split,
            files=tuple(s["file"] for s in shards), counts=counts,
            sizes=tuple(int(s["bytes"]) for s in shards), sha256=tuple(s["sha256"] for s in shards),
            firsts=tuple(itertools.accumulate((0,) + counts[:-1])),
            dtype=manifest["dtype"], prepared_len=int(manifest["seq_len"]) + 1, sample_len=seq_len + 1,
            vocab_size=int(manifest["tokenizer"]["vocab_size"]),
            slots=slots, seed=seed, shuffle=shuffle,
        )

    def slot_shards(self, slot: int, epoch: int) -> list[int]:
        """Shard indices of `slot` in `epoch`, in reading order."""
        order = list(range(len(self.files)))
        if self.shuffle:
            random.Random(self.seed * 1000003 + epoch).shuffle(order)
        return order[slot :: self.slots]

    def slot_epoch_samples(self, slot: int, epoch: int) -> int:
        return sum(self.counts[i] for i in self.slot_shards(slot, epoch))

    def position(self, slot: int, k: int) -> tuple[int, int, int]:
        """(epoch, index into slot_shards, sample offset in that shard) of sample k of `slot`,
        from the manifest's counts alone."""
        epoch = 0
        while True:
            shards = self.slot_shards(slot, epoch)
            for index, shard in enumerate(shards):
                if k < self.counts[shard]:
                    return epoch, index, k
                k -= self.counts[shard]
            epoch += 1

    def slot_stream(self, slot: int, start: int, loop: bool) -> Iterator[np.ndarray]:
        """Samples of `slot` from its sample `start`; endless if `loop`, else epoch 0 only."""
        epoch, index, offset = self.position(slot, start)
        while loop or epoch == 0:
            shards = self.slot_shards(slot, epoch)
            for shard in shards[index:]:
                for _, tokens in read_shard(self, shard, skip=offset):
                    yield tokens
                offset = 0
            epoch, index = epoch + 1, 0


class _HashingReader(io.RawIOBase):
    """A read-only file that hashes and counts what passes through it."""

    def __init__(self, raw):
        self.raw, self.digest, self.nbytes = raw, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.nbytes += n
        return n

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def read_shard(plan: _Plan, shard: int, skip: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (key, tokens[:sample_len]) of one shard from sample `skip` on, via webdataset's tar
    reader. Keys, dtype, shape, token range, sample count, size and sha256 are checked against the
    manifest (the last three once the shard is read to its end); any failure raises ShardError
    naming the shard file."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    name = plan.files[shard]
    path = os.path.join(plan.data_dir, name)
    expected = plan.counts[shard]
    read = 0
    try:
        with open(path, "rb") as raw:
            stream = _HashingReader(raw)
            files = tar_file_expander([{"url": name, "stream": io.BufferedReader(stream)}])
            for sample in group_by_keys(files):
                key = sample_key(plan.split, plan.firsts[shard] + read)
                if read >= expected:
                    raise ShardError(f"shard {name} holds more samples than the manifest's {expected}")
                if sample.get("__key__") != key or TOKEN_FIELD not in sample:
                    raise ShardError(f"shard {name}: sample {read} is {sample.get('__key__')!r} with fields "
                                     f"{sorted(k for k in sample if not k.startswith('__'))}, expected {key!r} with {TOKEN_FIELD}")
                read += 1
                if read <= skip:
                    continue
                yield key, _decode(plan, name, key, sample[TOKEN_FIELD])
            if read != expected:
                raise ShardError(f"shard {name} holds {read} samples but the manifest says {expected} (truncated or corrupt)")
            stream.drain()
            if stream.nbytes != plan.sizes[shard]:
                raise ShardError(f"shard {name} is {stream.nbytes} bytes but the manifest says {plan.sizes[shard]} (truncated or replaced)")
            if stream.digest.hexdigest() != plan.sha256[shard]:
                raise ShardError(f"shard {name} fails its sha256 check (corrupt)")
    except ShardError:
        raise
    except Exception as err:  # tar, npy or I/O errors: name the shard
        raise ShardError(f"cannot read shard {name} ({path}) after {read} samples: {type(err).__name__}: {err}") from err


def _decode(plan: _Plan, name: str, key: str, data: bytes) -> np.ndarray:
    array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    if array.dtype != np.dtype(plan.dtype) or array.shape != (plan.prepared_len,):
        raise ShardError(f"shard {name}: sample {key} is {array.dtype}{list(array.shape)}, "
                         f"expected {plan.dtype}[{plan.prepared_len}]")
    array = array[: plan.sample_len]
    if array.size and int(array.max()) >= plan.vocab_size:
        raise ShardError(f"shard {name}: sample {key} has token id {int(array.max())} >= vocab_size {plan.vocab_size} (corrupt)")
    return array


def _worker_rows(rows: int, worker: int, workers: int) -> list[int]:
    """Rows (local slot indices) served by DataLoader worker `worker` of `workers`."""
    return list(range(worker, rows, workers))


class _RankSamples(IterableDataset):
    """Single samples of one rank, tagged (micro-batch, row), round-robin over its worker's rows."""

    def __init__(self, plan: _Plan, first_slot: int, rows: int, start: int, stop: Optional[int], loop: bool):
        self.plan, self.first_slot, self.rows = plan, first_slot, rows
        self.start, self.stop, self.loop = start, stop, loop

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rows = _worker_rows(self.rows, worker, workers)
        streams = [self.plan.slot_stream(self.first_slot + j, self.start, self.loop) for j in rows]
        for k in (itertools.count(self.start) if self.stop is None else range(self.start, self.stop)):
            for j, stream in zip(rows, streams):
                yield k, j, torch.from_numpy(next(stream).astype(np.int64))


class StreamingTokenLoader:
    """Iterate LongTensor micro-batches [micro_batch_size, seq_len + 1] of one rank.

    loop=True (training): endless, each `iter()` continues where the last batch left off;
    `state_dict()`/`load_state_dict()` resume exactly. loop=False (evaluation): each slot reads its
    epoch-0 shards once and the pass stops when any slot runs out, so every rank yields the same
    number of batches (`num_batches`); a new `iter()` starts a new pass. `max_batches` caps the
    batches of one `iter()` in both modes."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        *,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seq_len: Optional[int] = None,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        loop: bool = True,
        max_batches: Optional[int] = None,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if micro_batch_size < 1:
            raise ValueError(f"trainer.micro_batch_size must be positive, got {micro_batch_size}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        if num_workers and micro_batch_size % num_workers:
            raise ValueError(f"data.num_workers={num_workers} must divide trainer.micro_batch_size={micro_batch_size} "
                             "(each worker serves the same number of rows)")
        if max_batches is not None and max_batches < 0:
            raise ValueError(f"max_batches must be >= 0, got {max_batches}")
        self.data_dir = Path(data_dir)
        self.manifest = load_manifest(self.data_dir)
        prepared = int(self.manifest["seq_len"])
        self.seq_len = prepared if seq_len is None else int(seq_len)
        if not 0 < self.seq_len <= prepared:
            raise ValueError(f"data.seq_len={self.seq_len} must be between 1 and the prepared seq_len {prepared}")
        self.split, self.rank, self.world_size = split, rank, world_size
        self.micro_batch_size, self.num_workers = micro_batch_size, num_workers
        self.shuffle, self.seed, self.loop, self.max_batches = shuffle, int(seed), loop, max_batches
        self.slots = micro_batch_size * world_size
        self._plan = _Plan.from_manifest(self.data_dir, self.manifest, split, self.slots, self.seq_len, self.seed, shuffle)
        shards = len(self._plan.files)
        if shards < self.slots:
            raise ValueError(
                f"the {split} split of {self.data_dir} has {shards} shards but micro_batch_size x world_size = "
                f"{micro_batch_size} x {world_size} = {self.slots} streams need at least {self.slots}; "
                f"prepare it again with a smaller --samples-per-shard (now {self.manifest.get('samples_per_shard', '?')})")
        self._next = 0  # index of the next micro-batch

    @classmethod
    def from_config(cls, data_cfg, *, split: str, micro_batch_size: int, rank: int, world_size: int, seed: int,
                    loop: bool = True, max_batches: Optional[int] = None) -> "StreamingTokenLoader":
        """Build from the run config's `data` section (DataConfig)."""
        return cls(data_cfg.path, split, micro_batch_size=micro_batch_size, rank=rank, world_size=world_size,
                   seq_len=data_cfg.seq_len, num_workers=data_cfg.num_workers, shuffle=data_cfg.shuffle,
                   seed=seed, loop=loop, max_batches=max_batches)

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def num_batches(self) -> Optional[int]:
        """Batches of one pass (loop=False; capped by max_batches), None when endless."""
        if self.loop:
            return self.max_batches
        full = min(self._plan.slot_epoch_samples(s, 0) for s in range(self.slots))
        return full if self.max_batches is None else min(full, self.max_batches)

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION, "split": self.split, "slots": self.slots, "micro_batches": self._next,
            "seed": self.seed, "shuffle": self.shuffle, "seq_len": self.seq_len,
            "micro_batch_size": self.micro_batch_size, "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue with micro-batch number state["micro_batches"] (cheap: no skipped shard is read)."""
        if state.get("slots") != self.slots:
            raise ValueError(
                f"the data state was saved with {state.get('slots')} streams (micro_batch_size {state.get('micro_batch_size')} x "
                f"world_size {state.get('world_size')}) but this run has {self.slots} ({self.micro_batch_size} x {self.world_size}); "
                "changing the global micro-batch is not an exact resume")
        for key in ("split", "seed", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"the data state was saved with {key}={state[key]!r}, this loader has {getattr(self, key)!r}")
        if int(state["micro_batches"]) < 0:
            raise ValueError(f"invalid micro_batches {state['micro_batches']}")
        self._next = int(state["micro_batches"])

    def __iter__(self) -> Iterator[torch.Tensor]:
        start = self._next
        if self.loop:
            stop = None if self.max_batches is None else start + self.max_batches
        else:
            full = min(self._plan.slot_epoch_samples(s, 0) for s in range(self.slots))
            stop = full if self.max_batches is None else min(full, start + self.max_batches)
        dataset = _RankSamples(self._plan, self.rank * self.micro_batch_size, self.micro_batch_size, start, stop, self.loop)
        if self.num_workers:
            # A private generator: starting workers must not draw from the global RNG, whose
            # stream (dropout) is part of exact resume.
            items = iter(DataLoader(dataset, batch_size=None, num_workers=self.num_workers, shuffle=False,
                                    generator=torch.Generator().manual_seed(self.seed)))
        else:
            items = iter(dataset)
        try:
            k = start
            while stop is None or k < stop:
                rows = []
                for j in range(self.micro_batch_size):
                    item_k, item_j, tokens = next(items)
                    if (item_k, item_j) != (k, j):
                        raise RuntimeError(f"data order broken: got micro-batch {item_k} row {item_j}, expected {k} row {j}")
                    rows.append(tokens)
                self._next = k + 1
                yield torch.stack(rows)
                k += 1
        finally:
            if not self.loop:
                self._next = 0  # the next evaluation pass starts from the beginning


def iter_split_once(
    data_dir: str | os.PathLike,
    split: str = "train",
    *,
    rank: int = 0,
    world_size: int = 1,
    micro_batch_size: int = 1,
    worker_index: int = 0,
    num_workers: int = 1,
    epoch: int = 0,
    shuffle: bool = True,
    seed: int = 0,
) -> Iterator[tuple[str, np.ndarray]]:
    """(key, tokens) of every sample that (rank, worker) reads in `epoch`: all samples of the
    shards dealt to its slots, with the loader's dealing. Across all ranks and workers each
    sample of the split comes exactly once."""
    manifest = load_manifest(data_dir)
    slots = micro_batch_size * world_size
    plan = _Plan.from_manifest(data_dir, manifest, split, slots, int(manifest["seq_len"]), seed, shuffle)
    if len(plan.files) < slots:
        raise ValueError(f"the {split} split has {len(plan.files)} shards, fewer than the {slots} streams")
    for j in _worker_rows(micro_batch_size, worker_index, max(num_workers, 1)):
        for shard in plan.slot_shards(rank * micro_batch_size + j, epoch):
            yield from read_shard(plan, shard)
