"""Modality- and length-grouped batching (LLaVA's `group_by_modality_length`), map-style and streaming.

Why: a batch that mixes a 600-token image sample with a 60-token text-only one is mostly padding, and
LLaVA reports ~25 % faster training from grouping. Both versions put only samples of one modality (with
images / text-only) in a batch and sort by length inside a *megabatch* so that neighbours have similar length;
the megabatch keeps the order random at a larger scale.

* `GroupedBatchSampler` (map-style, whole epoch known): per modality, a random permutation is cut into
  megabatches of `megabatch_factor` global steps (`world_size × batch_size` samples each), each sorted by
  length and cut into steps; step order is shuffled; rank r takes the r-th slice of every step, so all ranks
  get the same number of batches and, within one step, similar lengths (balanced work). The per-modality
  remainders (< one step each) are pooled, sorted and emitted last: the only mixed-modality batches — at most
  two steps per epoch (documented leftover). It subclasses `DistributedSampler` because it does the rank split
  itself: Lightning then leaves it alone (no sampler injection) and calls its `set_epoch`.
* `group_stream` (shards): per modality a buffer of `megabatch_factor × batch_size` samples; when full it is
  sorted by length and emitted as batches in random order. At the end of a one-pass stream the buffers are
  emitted as single-modality batches and the remainders (< one batch each) pooled into a mixed one.

**Token budgets** (`max_tokens`, `data.max_tokens`): memory is bounded by tokens, not samples. A micro-batch
takes samples (longest first, per modality) while `samples × longest ≤ max_tokens` and `samples ≤ batch_size`,
so short samples travel many to a batch and long ones few (fairseq's batching by size). With a budget the
map-style sampler cuts each pool into micro-batches once per seed (a fixed partition, so every epoch has the same
number of batches and Lightning's epoch length holds) and shuffles their order every epoch; each global step
gives its `num_replicas` consecutive (similar-length) micro-batches to the ranks. Lengths are the records'
estimates (`RecordStore.estimated_lengths`): leave some headroom. `group_stream` (shards) cuts each sorted
megabatch buffer the same way on the samples' real token counts, keeping a last, not yet full cut in the buffer;
the stream then needs a fixed number of batches per rank (`data.batches_per_epoch`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler

from dc.utils.errors import ConfigError


def budget_cuts(lengths: np.ndarray, max_tokens: int, max_samples: int) -> list[tuple[int, int]]:
    """Cut a sequence of lengths (sorted longest first) into [start, end) runs with `n × longest ≤ max_tokens`.

    A run never exceeds `max_samples`; a single sample longer than `max_tokens` is a run of its own.
    """
    cuts, start = [], 0
    while start < len(lengths):
        longest = max(int(lengths[start]), 1)
        take = max(1, min(max_samples, max_tokens // longest))
        end = min(start + take, len(lengths))
        cuts.append((start, end))
        start = end
    return cuts


class GroupedBatchSampler(DistributedSampler):
    """Yields this rank's batches as lists of dataset indices (use with `DataLoader(batch_size=None)`).

    Args:
        lengths: per-record length estimate (tokens).
        has_image: per-record modality.
        batch_size: per-rank micro-batch size.
        num_replicas, rank: the data-parallel world (1, 0 on one device).
        group: group by modality and length; False gives plain random batches (stage 1 in the reference).
        megabatch_factor: steps per megabatch (larger = less padding, less randomness).
        shuffle: shuffle (training); False keeps file order (still grouped if `group`).
        seed: base seed; the epoch (`set_epoch`) is mixed in, identically on every rank.
        drop_last: drop the final partial step instead of padding it by repeating some of its samples.
        max_tokens: token budget per micro-batch (`samples × longest`); `batch_size` is then the most samples a
            micro-batch may hold. None: fixed-size batches.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        has_image: np.ndarray,
        batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        group: bool = True,
        megabatch_factor: int = 8,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__(
            range(len(lengths)), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        if batch_size < 1 or megabatch_factor < 1:
            raise ValueError(f"batch_size={batch_size} and megabatch_factor={megabatch_factor} must be >= 1")
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            raise ConfigError(f"data.max_tokens={max_tokens!r}: expected a positive integer or null")
        self.max_tokens = max_tokens
        self._budget_batches: list[np.ndarray] | None = None
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.has_image = np.asarray(has_image, dtype=bool)
        if self.lengths.shape != self.has_image.shape:
            raise ValueError("lengths and has_image must have the same length")
        self.batch_size = batch_size
        self.group = group
        self.megabatch_factor = megabatch_factor

    def batching(self) -> dict[str, Any]:
        """The settings that decide which records form each batch (a restored data position must share them)."""
        return batching_settings(self)

    def _pools(self) -> list[np.ndarray]:
        idx = np.arange(len(self.lengths))
        if not self.group:
            return [idx]
        return [idx[self.has_image], idx[~self.has_image]]

    def __len__(self) -> int:
        if self.max_tokens is not None:
            return len(self.budget_steps())
        step = self.num_replicas * self.batch_size
        sizes = [len(p) for p in self._pools()]
        rest = sum(n % step for n in sizes)
        return sum(n // step for n in sizes) + rest // step + int(bool(rest % step) and not self.drop_last)

    def steps(self) -> list[np.ndarray]:
        """Every global step of this epoch: arrays of `world × batch_size` indices (the last may be shorter)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        step = self.num_replicas * self.batch_size
        mega = step * self.megabatch_factor
        steps: list[np.ndarray] = []
        rest: list[np.ndarray] = []
        for pool in self._pools():
            order = rng.permutation(pool) if self.shuffle else pool
            for start in range(0, len(order), mega):
                chunk = order[start : start + mega]
                if self.group:
                    chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                full = len(chunk) // step * step
                steps.extend(chunk[k : k + step] for k in range(0, full, step))
                rest.append(chunk[full:])
        if self.shuffle:
            steps = [steps[k] for k in rng.permutation(len(steps))]
        left = np.concatenate(rest) if rest else np.zeros(0, np.int64)
        if self.group:
            left = left[np.argsort(-self.lengths[left], kind="stable")]
        full = len(left) // step * step
        steps.extend(left[k : k + step] for k in range(0, full, step))
        tail = left[full:]
        if len(tail) and not self.drop_last:
            # Pad by repeating the tail's own samples so every rank gets an equal, non-empty share.
            per_rank = -(-len(tail) // self.num_replicas)
            steps.append(np.resize(tail, per_rank * self.num_replicas))
        return steps

    def budget_batches(self) -> list[np.ndarray]:
        """The fixed partition into token-budgeted micro-batches (depends on the seed only), longest first per pool."""
        if self._budget_batches is None:
            rng = np.random.default_rng([self.seed, 0x7B])  # tie-break among equal lengths, not epoch-dependent
            batches = []
            for pool in self._pools():
                pool = rng.permutation(pool)
                order = pool[np.argsort(-self.lengths[pool], kind="stable")]
                for start, end in budget_cuts(self.lengths[order], self.max_tokens, self.batch_size):
                    batches.append(order[start:end])
            self._budget_batches = batches
        return self._budget_batches

    def budget_steps(self) -> list[list[np.ndarray]]:
        """This epoch's global steps under a token budget: `num_replicas` micro-batches each, in shuffled order."""
        batches = self.budget_batches()
        world = self.num_replicas
        steps = [batches[k : k + world] for k in range(0, len(batches) - world + 1, world)]
        tail = batches[len(steps) * world :]
        if tail and not self.drop_last:  # pad the last step by repeating its own micro-batches
            steps.append([tail[k % len(tail)] for k in range(world)])
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            steps = [steps[k] for k in rng.permutation(len(steps))]
        return steps

    def __iter__(self) -> Iterator[list[int]]:
        if self.max_tokens is not None:
            for step in self.budget_steps():
                yield step[self.rank].tolist()
            return
        for s in self.steps():
            per_rank = len(s) // self.num_replicas
            yield s[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()


def _n_images(sample: dict[str, Any]) -> int:
    return sample["n_images"] if "n_images" in sample else sample["pixel_values"].shape[0]


def _sorted_batches(
    buffer: list[dict], batch_size: int, rng: np.random.Generator | None, max_tokens: int | None = None
) -> tuple[list[list[dict]], list[dict]]:
    """Sort `buffer` by length (longest first) and cut into full batches; return (batches, remainder).

    With `max_tokens` the cuts are `budget_cuts`; the last cut is the remainder unless it is full (it holds as
    many samples as its longest allows).
    """
    buffer = sorted(buffer, key=lambda s: len(s["input_ids"]), reverse=True)
    if max_tokens is None:
        full = len(buffer) // batch_size * batch_size
        batches = [buffer[k : k + batch_size] for k in range(0, full, batch_size)]
    else:
        lengths = np.array([len(s["input_ids"]) for s in buffer], dtype=np.int64)
        cuts = budget_cuts(lengths, max_tokens, batch_size)
        if cuts:
            start, end = cuts[-1]
            if end - start < max(1, min(batch_size, max_tokens // max(int(lengths[start]), 1))):
                cuts = cuts[:-1]
        batches = [buffer[x:y] for x, y in cuts]
        full = cuts[-1][1] if cuts else 0
    if rng is not None:
        batches = [batches[k] for k in rng.permutation(len(batches))]
    return batches, buffer[full:]


def group_stream(
    samples: Iterable[dict[str, Any]],
    batch_size: int,
    *,
    group: bool = True,
    megabatch_factor: int = 8,
    rng: np.random.Generator | None = None,
    drop_last: bool = False,
    max_tokens: int | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Group a stream of samples into batches (lists of samples), by modality and length when `group`.

    Without `group` the samples are batched in arrival order. At the end of the stream every buffered sample
    is emitted (the last, mixed-modality batch may be short unless `drop_last`). `max_tokens`: token-budgeted
    batches (`samples × longest ≤ max_tokens`, at most `batch_size` samples; lengths are the real token counts).
    """
    if not group:
        batch: list[dict] = []
        longest = 0
        for s in samples:
            n = len(s["input_ids"])
            if batch and max_tokens is not None and (len(batch) + 1) * max(longest, n) > max_tokens:
                yield batch
                batch, longest = [], 0
            batch.append(s)
            longest = max(longest, n)
            if len(batch) == batch_size:
                yield batch
                batch, longest = [], 0
        if batch and not drop_last:
            yield batch
        return
    mega = batch_size * megabatch_factor
    buffers: dict[bool, list[dict]] = {True: [], False: []}
    for s in samples:
        buf = buffers[_n_images(s) > 0]
        buf.append(s)
        if len(buf) >= mega:
            batches, rest = _sorted_batches(buf, batch_size, rng, max_tokens)
            buf[:] = rest  # only a budgeted cut leaves a remainder here (its last, not yet full batch)
            yield from batches
    left: list[dict] = []
    for buf in buffers.values():
        batches, rest = _sorted_batches(buf, batch_size, rng, max_tokens)
        yield from batches
        left.extend(rest)
    batches, rest = _sorted_batches(left, batch_size, None, max_tokens)
    yield from batches
    if rest and not drop_last:
        yield rest


def check_batching(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> None:
    """Refuse to restore a data position recorded under other batching settings (`batching()` of a sampler or
    stream): the batches already consumed would be counted in batches of another composition.

    Raises:
        ConfigError: naming each changed `data.*` key.
    """
    if saved is None or current is None or saved == current:
        return
    changed = ", ".join(
        f"data.{k}: {saved.get(k)!r} -> {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    )
    raise ConfigError(
        f"cannot resume the data position: the batches are formed differently from the checkpoint's ({changed}); "
        f"resume with the checkpoint's settings"
    )


def batching_settings(source: Any) -> dict[str, Any]:
    """What decides the composition of the batches of a sampler or stream (`batch_size`, `max_tokens`, `group`,
    `megabatch_factor` attributes), by config key: recorded with a data position, compared on resume.
    """
    return {
        "batch_size": source.batch_size,
        "max_tokens": source.max_tokens,
        "group_by_modality_length": source.group,
        "megabatch_factor": source.megabatch_factor,
    }
