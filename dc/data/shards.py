"""Webdataset tar shards → grouped, padded batches, as an `IterableDataset` that batches inside each worker.

A shard sample is `{key}.json` (the LLaVA record) plus its image bytes as `{key}.jpg` / `.png` / ... (several
images: `{key}.0.jpg`, `{key}.1.jpg`, ...); text-only samples have no image member. Shards are written by
`python -m dc.data.to_shards`, which also writes `index.json` (shard names and sample counts).

Splitting (every rank must see the same number of batches, or DDP waits forever at the end of an epoch):

* The shard list is shuffled per epoch with a seed shared by all ranks, then split over the
  `world_size × num_workers` reader slots: whole shards when there are at least as many shards as slots,
  otherwise every slot reads every shard and keeps every `slots`-th sample.
* `batches_per_rank=None` (one device only): one pass; each worker emits its remainder at the end and the
  length is an upper bound (`length_hint`).
* `batches_per_rank=N`: exactly N batches per rank per epoch (split over the workers); each worker cycles over
  its shards (reshuffled every pass) until its share is done, so ranks with fewer samples repeat some and
  ranks with more leave some for the next epoch. With `resampled=True` each worker instead draws shards at
  random with replacement (webdataset's `ResampledShards` + `with_epoch`).

Inside a worker: raw samples → shuffle buffer (encoded bytes) → checks + tokenisation (`SampleBuilder.prepare`)
→ modality/length grouping (`group_stream`) → images decoded for the batch about to be emitted only
(`SampleBuilder.finish`) → collate. Bad records are counted per worker and travel with the next batch it emits
(`batch["skipped"]`); in one-pass mode each worker holds one batch back so that skips after its last full batch
are still reported.

Resume: `ShardLoader.state_dict()` is (epoch, batches handed out); on resume each worker regroups (without
decoding images) and drops the batches already trained on, so the run continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dc.data.collate import Collator
from dc.data.grouping import batching_settings, check_batching, group_stream
from dc.data.records import BadRecord, SampleBuilder, SkipReporter
from dc.utils.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
MANIFEST = "index.json"
_NUMBERED = re.compile(r"^(\d+)\.([a-z]+)$")


def resolve_shards(spec: str) -> tuple[list[str], dict | None]:
    """Shard paths and the manifest (or None) from `data.shards`.

    `spec` is a folder holding `index.json`, the `index.json` itself, a brace pattern
    (`.../train-{000000..000099}.tar`) or a glob (`.../*.tar`). A pattern's folder's `index.json`, when present,
    supplies the sample counts of the shards it lists.
    """
    path = Path(spec)
    if path.is_dir():
        path = path / MANIFEST
    if path.name == MANIFEST:
        if not path.exists():
            raise FileNotFoundError(
                f"data.shards={spec}: no {MANIFEST} there; write shards with `python -m dc.data.to_shards`"
            )
        manifest = json.loads(path.read_text())
        return [str(path.parent / s["name"]) for s in manifest["shards"]], manifest
    urls = sorted({u for pattern in wds.shardlists.expand_urls(spec) for u in _glob(pattern)})
    if not urls:
        raise FileNotFoundError(f"data.shards={spec}: matches no file")
    index = Path(urls[0]).parent / MANIFEST
    manifest = json.loads(index.read_text()) if index.exists() else None
    if manifest is not None:
        counts = {s["name"]: s for s in manifest["shards"]}
        manifest = {**manifest, "shards": [counts[Path(u).name] for u in urls if Path(u).name in counts]}
        if len(manifest["shards"]) != len(urls):
            unlisted = [Path(u).name for u in urls if Path(u).name not in counts]
            log.warning(
                "data.shards=%s matches %d file(s) that %s does not list (from another or an interrupted conversion?): "
                "%s; they are read too, and sample counts are unknown. Name the folder to read only the listed shards.",
                spec,
                len(unlisted),
                index,
                ", ".join(unlisted[:5]) + (", ..." if len(unlisted) > 5 else ""),
            )
            manifest = None  # shards the manifest does not describe: counts unknown
    return urls, manifest


def _glob(pattern: str) -> list[str]:
    if not any(c in pattern for c in "*?["):
        return [pattern] if Path(pattern).exists() else []
    p = Path(pattern)
    return [str(x) for x in p.parent.glob(p.name)]


def image_members(raw: dict[str, Any]) -> list[bytes]:
    """Image bytes of a raw shard sample, in order (`jpg`, or `0.jpg`, `1.png`, ...)."""
    numbered = []
    single = []
    for ext, data in raw.items():
        if ext.startswith("__"):
            continue
        if ext in IMAGE_EXTS:
            single.append(data)
        elif (m := _NUMBERED.match(ext)) and m.group(2) in IMAGE_EXTS:
            numbered.append((int(m.group(1)), data))
    return single + [d for _, d in sorted(numbered, key=lambda t: t[0])]


def _shuffle(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Streaming shuffle with a buffer of `size` items (1 = no shuffle)."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        k = int(rng.integers(size))
        buf[k], item = item, buf[k]
        yield item
    rng.shuffle(buf)
    yield from buf


class ShardStream(IterableDataset):
    """Batches from webdataset shards; see the module docstring for splitting and epoch semantics.

    Args:
        urls: shard paths.
        builder: record → sample.
        collate: samples → batch.
        batch_size: per-rank micro-batch size.
        strict: raise on the first bad record.
        rank, world_size: this process in the data-parallel world.
        batches_per_rank: exact batches per rank per epoch, or None for one pass (one device).
        resampled: draw shards with replacement (needs `batches_per_rank`).
        group: group by modality and length (`group_stream`).
        megabatch_factor: batches per sorting buffer.
        shuffle_buffer: samples in the per-worker shuffle buffer (raw bytes, before decoding).
        seed: base seed.
        epoch: first epoch number (the trainer's epoch on resume); each new iteration adds one.
        length_hint: what `len()` reports in one-pass mode (an upper bound), or None if unknown.
        expected_counts: samples per shard path from `index.json` (a shard that yields fewer is a `bad_shard`).
        max_tokens: token budget per micro-batch (`samples × longest`, real token counts; `batch_size` is then the
            most samples); needs `batches_per_rank`, since the number of batches a pass gives is not known.
    """

    def __init__(
        self,
        urls: list[str],
        builder: SampleBuilder,
        collate: Collator,
        batch_size: int,
        *,
        strict: bool = False,
        rank: int = 0,
        world_size: int = 1,
        batches_per_rank: int | None = None,
        resampled: bool = False,
        group: bool = True,
        megabatch_factor: int = 8,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        epoch: int = 0,
        length_hint: int | None = None,
        expected_counts: dict[str, int] | None = None,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("ShardStream needs at least one shard")
        if max_tokens is not None and batches_per_rank is None:
            raise ConfigError(
                "data.max_tokens with data.format=shards needs data.batches_per_epoch (how many token-budgeted "
                "batches a pass over the shards gives is not known in advance)"
            )
        if resampled and batches_per_rank is None:
            raise ConfigError("data.resampled=true needs a fixed number of batches (data.batches_per_epoch)")
        if world_size > 1 and batches_per_rank is None:
            raise ValueError("several ranks need a fixed number of batches per rank (data.batches_per_epoch)")
        self.urls = list(urls)
        self.builder, self.collate, self.batch_size = builder, collate, batch_size
        self.report = SkipReporter(strict)
        self.rank, self.world_size = rank, world_size
        self.batches_per_rank, self.resampled = batches_per_rank, resampled
        self.group, self.megabatch_factor = group, megabatch_factor
        self.shuffle_buffer, self.seed = max(1, shuffle_buffer), seed
        self.epoch, self.length_hint = epoch, length_hint
        self.expected_counts = expected_counts or {}
        self.max_tokens = max_tokens
        self.skip: tuple[int, int] | None = None  # (epoch, batches of this rank to fast-forward), set on resume
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._iterations = epoch, 0

    def batching(self) -> dict[str, Any]:
        """The settings that decide which samples form each batch (a restored data position must share them)."""
        return batching_settings(self)

    def __len__(self) -> int:
        if self.batches_per_rank is not None:
            return self.batches_per_rank
        if self.length_hint is None:
            raise TypeError("length unknown: shards without index.json and no data.batches_per_epoch")
        return self.length_hint

    # --- raw samples -----------------------------------------------------------------------------
    def _read(self, urls: list[str], pending: Counter, stride: int = 1, offset: int = 0) -> Iterator[dict]:
        """Raw samples of `urls` in order (every `stride`-th from `offset`); a read error counts its shard once.

        A shard that yields fewer samples than `index.json` lists (cut at a member boundary, which a tar stream
        cannot tell from its end) also counts as `bad_shard`.
        """
        failed: set[str] = set()
        seen: Counter = Counter()

        def on_error(exc: Exception) -> bool:
            if self.report.strict:
                raise exc
            # webdataset appends the url (or the open file, whose repr holds the path) to the exception's args
            url = next((u for u in urls if any(u in str(a) for a in exc.args)), None) or repr(exc)
            if url not in failed:
                failed.add(url)
                pending["bad_shard"] += 1
                log.warning("shard read error (bad_shard), continuing with the next shard: %s", exc)
            return True

        for k, raw in enumerate(wds.tariterators.tarfile_samples(({"url": u} for u in urls), handler=on_error)):
            seen[raw.get("__url__")] += 1
            if k % stride == offset:
                yield raw
        for url in urls:
            expected = self.expected_counts.get(url)
            if expected is not None and seen[url] < expected and url not in failed:
                pending["bad_shard"] += 1
                log.warning("%s holds %d samples, index.json lists %d (bad_shard)", url, seen[url], expected)

    def _raw(
        self, worker: int, n_workers: int, epoch: int, pending: Counter, rng: np.random.Generator
    ) -> Iterator[dict]:
        if self.resampled:
            while True:
                yield from self._read([self.urls[int(rng.integers(len(self.urls)))]], pending)
        slots, slot = self.world_size * n_workers, self.rank * n_workers + worker
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.urls))
        urls = [self.urls[i] for i in order]
        stride, offset = (1, 0) if len(urls) >= slots else (slots, slot)
        if len(urls) >= slots:
            urls = urls[slot::slots]
        if self.batches_per_rank is None:
            yield from self._read(urls, pending, stride, offset)
            return
        while True:  # cycle over its shards, reshuffled each pass, until the consumer stops
            n = 0
            for raw in self._read(urls, pending, stride, offset):
                n += 1
                yield raw
            if n == 0:
                raise RuntimeError(f"rank {self.rank} worker {worker}: its shards {urls[:3]}... yield no sample")
            urls = [urls[i] for i in rng.permutation(len(urls))]

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        key = raw.get("__key__")
        if "json" not in raw:
            raise BadRecord("malformed_record", f"sample has no .json member (members: {sorted(raw)})", key)
        try:
            record = json.loads(raw["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRecord("bad_json", str(exc), key) from None
        images = image_members(raw)

        def resolve(rid: Any, paths: list[str]) -> list:
            if len(paths) > len(images):
                raise BadRecord("missing_image", f"record lists {len(paths)} image(s), sample has {len(images)}", rid)
            return [(lambda d=data: d) for data in images]

        return self.builder.prepare(record, resolve, fallback_id=key)

    # --- batches ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        process, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch + self._iterations
        self._iterations += 1
        # The loader takes batches from its worker processes in turn (0, 1, ..., W-1, 0, ...), so batch j of the
        # epoch is the next batch of worker role j % W. After a resume at batch s the loader starts again at
        # process 0, which therefore plays role s % W (and so on), skipping that role's share of the s batches.
        resume = self.skip[1] if self.skip is not None and self.skip[0] == epoch else 0
        worker = (process + resume) % n_workers  # the role: shard slot, seed and quota follow it
        quota = None
        if self.batches_per_rank is not None:
            quota = self.batches_per_rank // n_workers + int(worker < self.batches_per_rank % n_workers)
            if quota == 0:
                return
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        pending: Counter = Counter()

        def where(raw: dict[str, Any]) -> str:
            return f"{Path(raw.get('__url__', '?')).name}:{raw.get('__key__')}"

        def samples() -> Iterator[dict[str, Any]]:
            """Prepared samples (checked and tokenised; images still encoded)."""
            for raw in _shuffle(self._raw(worker, n_workers, epoch, pending, rng), self.shuffle_buffer, rng):
                try:
                    sample = self._decode(raw)
                except BadRecord as err:
                    pending[self.report(err, where(raw)).reason] += 1
                    continue
                sample["where"] = where(raw)
                yield sample

        def with_counts(group: list[dict]) -> dict[str, Any] | None:
            """Decode the group's images and collate; None if every sample of it turned out bad."""
            done = []
            for sample in group:
                try:
                    done.append(self.builder.finish(sample))
                except BadRecord as err:
                    pending[self.report(err, sample["where"]).reason] += 1
            if not done:
                return None
            batch = self.collate(done)
            batch["skipped"] = dict(pending)
            pending.clear()
            return batch

        groups = group_stream(
            samples(),
            self.batch_size,
            group=self.group,
            megabatch_factor=self.megabatch_factor,
            rng=rng,
            max_tokens=self.max_tokens,
        )
        if resume:
            # This role's share of the batches already trained on: regrouped but not decoded, skips not recounted.
            done = resume // n_workers + int(worker < resume % n_workers)
            for _ in zip(range(done), groups):
                pass
            pending.clear()
            if quota is not None:
                quota -= done
                if quota <= 0:
                    return
        if quota is not None:
            n = 0
            for group in groups:
                if (batch := with_counts(group)) is None:
                    continue
                yield batch
                n += 1
                if n == quota:
                    return
            return
        held = None
        for group in groups:
            if (batch := with_counts(group)) is None:
                continue
            if held is not None:
                yield held
            held = batch
        if held is not None:
            for reason, n in pending.items():
                held["skipped"][reason] = held["skipped"].get(reason, 0) + n
            yield held


class ShardLoader(DataLoader):
    """A `DataLoader` over a `ShardStream` whose `state_dict` is its position (epoch, batches handed out).

    Lightning stores it in checkpoints and gives it back before iterating on resume; the stream then
    fast-forwards past the batches already trained on (re-reading and re-tokenising them, not decoding their
    images). Exact when the resumed run has the same seed, shards, batch size, world size and num_workers, and
    with a fixed number of batches per epoch; in one-pass mode the order in which the loader interleaves its
    workers changes once a worker runs out, so near an epoch's end a few batches may repeat or be missed.
    """

    def __init__(self, stream: ShardStream, **kwargs: Any) -> None:
        super().__init__(stream, batch_size=None, **kwargs)
        self._epoch = stream.epoch - 1  # becomes stream.epoch at the first __iter__
        self._yielded = 0
        self._finished = True

    def __iter__(self) -> Iterator[Any]:
        stream: ShardStream = self.dataset  # type: ignore[assignment]
        if self._finished:
            self._epoch += 1
            self._yielded = 0
        self._finished = False
        for batch in super().__iter__():
            self._yielded += 1
            yield batch
        self._finished = True
        stream.skip = None

    def state_dict(self) -> dict[str, Any]:
        stream: ShardStream = self.dataset  # type: ignore[assignment]
        return {
            "epoch": self._epoch,
            "batches": self._yielded,
            "finished": self._finished,
            "batching": stream.batching(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stream: ShardStream = self.dataset  # type: ignore[assignment]
        check_batching(state.get("batching"), stream.batching())
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if state.get("finished"):
            epoch, batches = epoch + 1, 0
        stream.set_epoch(epoch)
        stream.skip = (epoch, batches) if batches else None
        self._epoch, self._yielded, self._finished = epoch, batches, False
        log.info("shard stream position restored: epoch %d, %d batches already consumed", epoch, batches)


def one_pass_length(num_samples: int, batch_size: int, num_workers: int) -> int:
    """Upper bound on the batches of one pass: each worker may end with a short and a mixed batch."""
    return math.ceil(num_samples / batch_size) + 2 * max(1, num_workers)
