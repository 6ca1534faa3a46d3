"""`StreamingTokenLoader`: one rank's micro-batches from one prepared split or a weighted
mixture of several, for any number of shards, ranks, rows and DataLoader workers.

Layout. The stream is the global sample order of `order.py` (a blend of sources for a
mixture). Global micro-batch k holds stream positions [k*G, (k+1)*G) with G = micro_batch_size
x world_size; rank r takes rows [r*mb, (r+1)*mb) of it. So the global batch never depends on
the world size, and one shard serves 64 ranks as well as one. DataLoader worker w of W builds
the micro-batches k = w (mod W); the DataLoader hands them out round-robin, i.e. in order.
The position (samples consumed) is the resumable state: resuming with another world size or
micro-batch continues the same global order.

An evaluation pass (loop=False) reads every sample of the split(s) once, unshuffled; rows past
the end of the last micro-batch are IGNORE_INDEX so every rank runs the same number of batches
and no token is counted twice."""
from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .errors import DataError, ShardError
from .manifest import load_manifest
from .order import MixtureSchedule, SplitOrder
from .shards import ShardSpec, read_shard

log = logging.getLogger(__name__)

STATE_VERSION = 2
IGNORE_INDEX = -100  # token value of padding rows in an evaluation pass (ignored by the loss)


@dataclass(frozen=True)
class _Source:
    """One prepared split as the readers see it (picklable: no open files)."""

    data_dir: str
    shards: tuple[ShardSpec, ...]
    dtype: str
    stored_len: int  # tokens per stored sample (prepared seq_len + 1)
    vocab_size: int
    order: SplitOrder

    def read(self, shard: int) -> np.ndarray:
        return read_shard(self.data_dir, self.shards[shard], np.dtype(self.dtype), self.stored_len, self.vocab_size)


class _Reader:
    """Rows of the stream by (source, ordinal), through a small cache of verified shards."""

    def __init__(self, sources: Sequence[_Source], sample_len: int, cache_shards: int):
        self.sources, self.sample_len, self.capacity = sources, sample_len, cache_shards
        self._cache: "OrderedDict[tuple[int, int], np.ndarray]" = OrderedDict()

    def _shard(self, source: int, shard: int) -> np.ndarray:
        key = (source, shard)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            self._cache[key] = self.sources[source].read(shard)
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return self._cache[key]

    def rows(self, source_ids: np.ndarray, ordinals: np.ndarray) -> np.ndarray:
        out = np.empty((len(ordinals), self.sample_len), dtype=np.int64)
        for s in np.unique(source_ids):
            mine = np.flatnonzero(source_ids == s)
            shards, offsets = self.sources[s].order.locate(ordinals[mine])
            for shard in np.unique(shards):
                pick = shards == shard
                out[mine[pick]] = self._shard(int(s), int(shard))[offsets[pick], : self.sample_len]
        return out


@dataclass(frozen=True)
class _Plan:
    """Everything a worker needs to build its micro-batches."""

    sources: tuple[_Source, ...]
    weights: tuple[float, ...]
    seed: int
    sample_len: int
    global_rows: int  # G
    first_row: int  # r * mb
    rows: int  # mb
    loop: bool
    cache_shards: int

    @property
    def total(self) -> int:
        """Samples of one evaluation pass (all sources, each once)."""
        return sum(s.order.total for s in self.sources)

    def assign(self, positions: np.ndarray, schedule: Optional[MixtureSchedule]) -> tuple[np.ndarray, np.ndarray]:
        """(source, ordinal) of stream positions."""
        if not self.loop:  # sources one after the other, each read once
            ends = np.cumsum([s.order.total for s in self.sources])
            src = np.searchsorted(ends, positions, side="right")
            return src, positions - np.concatenate([[0], ends[:-1]])[src]
        if schedule is None:
            return np.zeros_like(positions), positions
        return schedule.assign(positions)


class _RankBatches(IterableDataset):
    """(k, micro-batch k) of one rank for k in [0, stop), worker w taking k = w (mod W). Rows are
    located and gathered CHUNK micro-batches at a time, so the per-batch cost is a slice."""

    CHUNK = 64

    def __init__(self, plan: _Plan, start: int, stop: Optional[int]):
        self.plan, self.start, self.stop = plan, start, stop

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        p = self.plan
        reader = _Reader(p.sources, p.sample_len, p.cache_shards)
        schedule = MixtureSchedule(p.weights, p.seed) if p.loop and len(p.sources) > 1 else None
        for first in itertools.count(worker, workers * self.CHUNK):
            ks = first + workers * np.arange(self.CHUNK)
            if self.stop is not None:
                ks = ks[ks < self.stop]
                if not len(ks):
                    return
            positions = (self.start + ks[:, None] * p.global_rows + p.first_row + np.arange(p.rows)).ravel()
            if p.loop:
                batch = reader.rows(*p.assign(positions, schedule))
            else:  # an evaluation pass: positions past the end are padding
                batch = np.full((len(positions), p.sample_len), IGNORE_INDEX, dtype=np.int64)
                valid = positions < p.total
                if valid.any():
                    batch[valid] = reader.rows(*p.assign(positions[valid], schedule))
            for i, k in enumerate(ks):
                yield int(k), torch.from_numpy(batch[i * p.rows : (i + 1) * p.rows])


class StreamingTokenLoader:
    """Iterate LongTensor micro-batches [micro_batch_size, seq_len + 1] of one rank.

    loop=True (training): endless, each `iter()` continues where the last batch left off;
    `state_dict()`/`load_state_dict()` resume exactly. loop=False (evaluation): one pass over
    every sample of the split, padded with IGNORE_INDEX rows at the end, then a new `iter()`
    starts again; `max_batches` caps a pass (and any `iter()` when looping).

    `data_dir` is a prepared directory (or URL), or a list of (directory, weight) pairs for a
    mixture. `on_corrupt="skip"` verifies every shard up front and leaves the bad ones out of
    the order (counted in `skipped_shards`); "fail" raises ShardError, naming the shard, before
    any sample of a bad shard is used."""

    def __init__(
        self,
        data_dir: str | os.PathLike | Sequence[tuple[str, float]],
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
        shuffle_window: int = 8,
        on_corrupt: str = "fail",
        samples_per_step: Optional[int] = None,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in a world of size {world_size}")
        if micro_batch_size < 1:
            raise DataError(f"trainer.micro_batch_size must be positive, got {micro_batch_size}")
        if num_workers < 0:
            raise DataError(f"data.num_workers must be >= 0, got {num_workers}")
        if max_batches is not None and max_batches < 0:
            raise DataError(f"max_batches must be >= 0, got {max_batches}")
        if on_corrupt not in ("fail", "skip"):
            raise DataError(f"data.on_corrupt must be 'fail' or 'skip', got {on_corrupt!r}")
        mixture = [(str(data_dir), 1.0)] if isinstance(data_dir, (str, os.PathLike)) else [(str(d), float(w)) for d, w in data_dir]
        self.names = [d for d, _ in mixture]
        manifests = [load_manifest(d) for d, _ in mixture]  # read once: they may be remote
        self.manifest = manifests[0]
        prepared = min(int(m["seq_len"]) for m in manifests)
        self.seq_len = prepared if seq_len is None else int(seq_len)
        if not 0 < self.seq_len <= prepared:
            raise DataError(f"data.seq_len={self.seq_len} must be between 1 and the prepared seq_len {prepared}")
        self.split, self.rank, self.world_size = split, rank, world_size
        self.micro_batch_size, self.num_workers = micro_batch_size, num_workers
        self.shuffle, self.seed, self.loop, self.max_batches = shuffle and loop, int(seed), loop, max_batches
        self.global_rows = micro_batch_size * world_size
        self.samples_per_step = samples_per_step or self.global_rows
        self.skipped_shards: list[str] = []
        sources = tuple(self._source(d, m, split, shuffle_window, on_corrupt) for (d, _), m in zip(mixture, manifests))
        self._plan = _Plan(sources=sources, weights=tuple(w for _, w in mixture), seed=self.seed,
                           sample_len=self.seq_len + 1, global_rows=self.global_rows,
                           first_row=rank * micro_batch_size, rows=micro_batch_size, loop=loop,
                           cache_shards=len(sources) * (shuffle_window + 1))
        self._consumed = 0  # stream positions before the next micro-batch
        self._schedule = MixtureSchedule(self._plan.weights, self.seed)  # for proportions()

    def _source(self, data_dir: str, manifest: dict, split: str, window: int, on_corrupt: str) -> _Source:
        if split not in manifest["splits"]:
            raise DataError(f"{data_dir} has no split {split!r}; splits: {', '.join(manifest['splits'])}")
        if manifest["tokenizer"] != self.manifest["tokenizer"]:
            raise DataError(f"data.mixture: {data_dir} uses another tokenizer than {self.names[0]} "
                            f"({manifest['tokenizer']} vs {self.manifest['tokenizer']})")
        specs = tuple(ShardSpec(s["file"], int(s["samples"]), int(s["bytes"]), s["sha256"]) for s in manifest["splits"][split]["shards"])
        stored_len, vocab = int(manifest["seq_len"]) + 1, int(manifest["tokenizer"]["vocab_size"])
        if on_corrupt == "skip":
            good = []
            for spec in specs:
                try:
                    read_shard(data_dir, spec, np.dtype(manifest["dtype"]), stored_len, vocab)
                    good.append(spec)
                except ShardError as err:
                    log.warning("data.on_corrupt=skip: leaving out %s", err)
                    self.skipped_shards.append(f"{data_dir}/{spec.file}")
            specs = tuple(good)
            if not specs:
                raise ShardError(f"every shard of the {split} split of {data_dir} is bad")
        order = SplitOrder([s.samples for s in specs], self.seed, self.shuffle, window)
        return _Source(str(data_dir), specs, manifest["dtype"], stored_len, vocab, order)

    @classmethod
    def from_config(cls, data_cfg, *, split: str, micro_batch_size: int, rank: int, world_size: int, seed: int,
                    loop: bool = True, max_batches: Optional[int] = None,
                    samples_per_step: Optional[int] = None) -> "StreamingTokenLoader":
        """Build from the run config's `data` section (DataConfig): its path or its mixture."""
        source = [(m.path, m.weight) for m in data_cfg.mixture] if data_cfg.mixture else data_cfg.path
        return cls(source, split, micro_batch_size=micro_batch_size, rank=rank, world_size=world_size,
                   seq_len=data_cfg.seq_len, num_workers=data_cfg.num_workers, shuffle=data_cfg.shuffle and loop,
                   seed=seed, loop=loop, max_batches=max_batches, shuffle_window=data_cfg.shuffle_window,
                   on_corrupt=data_cfg.on_corrupt, samples_per_step=samples_per_step)

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def num_batches(self) -> Optional[int]:
        """Micro-batches of one pass (loop=False; capped by max_batches); when looping, max_batches."""
        if self.loop:
            return self.max_batches
        full = -(-self._plan.total // self.global_rows)
        return full if self.max_batches is None else min(full, self.max_batches)

    def metrics(self) -> dict[str, float]:
        """A mixture's realised share per source (`data/mix/<name>`) and the shards left out as corrupt."""
        out = {"data/skipped_shards": float(len(self.skipped_shards))} if self.skipped_shards else {}
        if len(self.names) > 1:
            out.update({f"data/mix/{Path(name).name}": share for name, share in self.proportions().items()})
        return out

    def proportions(self) -> dict[str, float]:
        """Share of the samples consumed so far that came from each source (a mixture's realised weights)."""
        if len(self.names) == 1 or not self._consumed:
            return {self.names[0]: 1.0} if len(self.names) == 1 else {}
        counts = self._schedule.counts_before(self._consumed)  # incremental: the position only grows
        return {name: float(c) / self._consumed for name, c in zip(self.names, counts)}

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "split": self.split, "consumed": self._consumed, "seed": self.seed,
                "shuffle": self.shuffle, "sources": self.names, "samples_per_step": self.samples_per_step,
                "micro_batch_size": self.micro_batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue at stream position state["consumed"] (cheap: nothing before it is read)."""
        if state.get("version") != STATE_VERSION:
            raise DataError("the checkpoint's data position was saved by an older loader (state version "
                            f"{state.get('version')}); it cannot be continued exactly")
        for key in ("split", "seed", "shuffle", "sources"):
            if state[key] != getattr(self, {"sources": "names"}.get(key, key)):
                raise DataError(f"the data state was saved with {key}={state[key]!r}, this loader has "
                                f"{getattr(self, {'sources': 'names'}.get(key, key))!r}")
        consumed = int(state["consumed"])
        if consumed < 0:
            raise DataError(f"invalid data position {consumed}")
        if state["samples_per_step"] != self.samples_per_step:
            log.warning("the global batch changed from %d to %d samples per step: continuing the same sample "
                        "order from sample %d, but steps no longer match the earlier run's",
                        state["samples_per_step"], self.samples_per_step, consumed)
        self._consumed = consumed

    def __iter__(self) -> Iterator[torch.Tensor]:
        start = self._consumed if self.loop else 0
        stop = self.num_batches
        dataset = _RankBatches(self._plan, start, stop)
        if self.num_workers:
            # A private generator: starting workers must not draw from the global RNG, whose
            # stream (dropout) is part of exact resume.
            items = iter(DataLoader(dataset, batch_size=None, num_workers=self.num_workers, shuffle=False,
                                    generator=torch.Generator().manual_seed(self.seed)))
        else:
            items = iter(dataset)
        for k, (got, batch) in enumerate(items):
            if got != k:
                raise RuntimeError(f"data order broken: got micro-batch {got}, expected {k}")
            if self.loop:
                self._consumed = start + (k + 1) * self.global_rows
            yield batch


def iter_split(data_dir: str | os.PathLike, split: str = "train") -> Iterator[tuple[int, np.ndarray]]:
    """(split-wide sample index, tokens [seq_len + 1]) of every stored sample, in stored order."""
    manifest = load_manifest(data_dir)
    index = 0
    for s in manifest["splits"][split]["shards"]:
        spec = ShardSpec(s["file"], int(s["samples"]), int(s["bytes"]), s["sha256"])
        tokens = read_shard(str(data_dir), spec, np.dtype(manifest["dtype"]), int(manifest["seq_len"]) + 1,
                            int(manifest["tokenizer"]["vocab_size"]))
        for row in tokens:
            yield index, row
            index += 1
