"""The global sample order: which stored sample sits at each position of the training stream.

It depends only on the manifest's shard sizes, the seed and the shuffle window, never on the
world size, micro-batch or worker count; ranks and workers just take their positions from it
(as Megatron-LM's index-based datasets and MosaicML streaming do).

Epoch e of a split: the shards are shuffled (seed, e), cut into windows of `window` shards, and
the samples inside each window are shuffled (seed, e, window). Positions run through epoch 0,
then epoch 1, and so on. Reads stay local: a window's shards are all a reader needs for a while.

A mixture interleaves several splits by weight: position p goes to source i when the Weyl
sequence u_p = frac(phase + p * (sqrt(5) - 1) / 2) falls in i's share of [0, 1). That is
deterministic, computable for any range of positions without replaying the stream, and its
proportions converge fast (low discrepancy)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

_GOLDEN = (5 ** 0.5 - 1) / 2
_CHUNK = 1 << 20  # positions per vectorised step when counting a mixture's history


class SplitOrder:
    """Maps ordinals (0, 1, 2, ... across epochs) of one split to (shard, offset in shard)."""

    def __init__(self, counts: list[int], seed: int, shuffle: bool, window: int):
        if not counts or min(counts) < 1:
            raise ValueError("a split needs at least one shard, each with at least one sample")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.total = int(self.counts.sum())
        self.seed, self.shuffle, self.window = int(seed), bool(shuffle), max(1, int(window))
        self._firsts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])  # first sample of each shard

    def locate(self, ordinals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, offset) arrays of the samples at `ordinals`."""
        ordinals = np.asarray(ordinals, dtype=np.int64)
        shards, offsets = np.empty_like(ordinals), np.empty_like(ordinals)
        epochs, within = np.divmod(ordinals, self.total)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            ends, shard_order = self._windows(int(epoch))
            windows = np.searchsorted(ends, within[sel], side="right")
            starts = np.concatenate([[0], ends[:-1]])
            for w in np.unique(windows):
                pick = windows == w
                members = self._window_samples(int(epoch), int(w))
                flat = members[within[sel][pick] - starts[w]]  # split-wide sample index
                idx = np.flatnonzero(sel)[pick]
                shards[idx] = np.searchsorted(self._firsts, flat, side="right") - 1
                offsets[idx] = flat - self._firsts[shards[idx]]
        return shards, offsets

    @lru_cache(maxsize=4)
    def _windows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(cumulative sample count at the end of each window, shard order) of an epoch."""
        order = np.arange(len(self.counts))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        sizes = np.add.reduceat(self.counts[order], np.arange(0, len(order), self.window))
        return np.cumsum(sizes), order

    @lru_cache(maxsize=8)
    def _window_samples(self, epoch: int, window: int) -> np.ndarray:
        """Split-wide sample indices of one window, in reading order."""
        _, order = self._windows(epoch)
        shards = order[window * self.window : (window + 1) * self.window]
        samples = np.concatenate([np.arange(self._firsts[s], self._firsts[s] + self.counts[s]) for s in shards])
        if self.shuffle:
            samples = np.random.default_rng([self.seed, epoch, window + 1]).permutation(samples)
        return samples


class MixtureSchedule:
    """Which source each position of a blended stream reads, and its ordinal in that source."""

    def __init__(self, weights: list[float], seed: int):
        w = np.asarray(weights, dtype=np.float64)
        if len(w) == 0 or (w <= 0).any():
            raise ValueError("mixture weights must be positive")
        self.bounds = np.cumsum(w / w.sum())[:-1]
        self.phase = float(np.random.default_rng([int(seed), 7]).random())
        self._at, self._counts = 0, np.zeros(len(w), dtype=np.int64)  # counts of positions < _at

    def sources(self, positions: np.ndarray) -> np.ndarray:
        u = np.modf(self.phase + np.asarray(positions, dtype=np.float64) * _GOLDEN)[0]
        return np.searchsorted(self.bounds, u, side="right")

    def counts_before(self, position: int) -> np.ndarray:
        """How many of the positions < `position` each source got (cached: cheap when moving forward)."""
        if position < self._at:
            self._at, self._counts = 0, np.zeros_like(self._counts)
        while self._at < position:
            end = min(position, self._at + _CHUNK)
            self._counts += np.bincount(self.sources(np.arange(self._at, end)), minlength=len(self._counts))
            self._at = end
        return self._counts.copy()

    def assign(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, ordinal within the source) of sorted, contiguous-or-not `positions`."""
        positions = np.asarray(positions, dtype=np.int64)
        first = int(positions[0])
        base = self.counts_before(first)
        span = np.arange(first, int(positions[-1]) + 1)
        src = self.sources(span)
        ordinal = np.empty(len(span), dtype=np.int64)
        for i in range(len(base)):
            mine = src == i
            ordinal[mine] = base[i] + np.arange(int(mine.sum()))
        keep = positions - first
        return src[keep], ordinal[keep]
