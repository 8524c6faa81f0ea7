"""The LightningDataModule for LLaVA-layout data: a JSON list + image folder, or webdataset shards of it.

`format: json` reads the records into a `RecordStore` and batches with `GroupedBatchSampler` (which also does
the rank split, so every rank gets the same number of batches); `format: shards` streams `ShardStream`
batches built inside the loader workers. Both give the same batch layout (`dc.data.collate`), skip bad records
by default (`strict: false`) and count the skips in `batch["skipped"]`. See docs/data.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from dc.data.collate import Collator
from dc.data.grouping import GroupedBatchSampler
from dc.data.llava_json import LlavaJsonDataset, RecordStore
from dc.data.records import SampleBuilder
from dc.data.shards import ShardLoader, ShardStream, one_pass_length, resolve_shards
from dc.data.visual import VisualProcessor, image_size_from_bytes
from dc.models.llms.templates import ChatTemplate
from dc.utils.errors import ConfigError

log = logging.getLogger(__name__)

FORMATS = ("json", "shards")


def _identity(batch: Any) -> Any:
    return batch


def dist_info(trainer: L.Trainer | None = None) -> tuple[int, int]:
    """(rank, world_size): from the trainer when attached, else torch.distributed, else (0, 1)."""
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class LlavaDataModule(L.LightningDataModule):
    """Train (and, for JSON, optional validation) loaders over LLaVA data.

    The model-dependent pieces (tokenizer, template, visual processor) are given by the pipeline; everything else
    comes from the `data` config.

    Args:
        train_file: LLaVA JSON list (or JSONL) of training records (`format: json`).
        image_folder: folder the records' `image` paths are relative to (`format: json`).
        tokenizer, template: from the model config (`stage.template` or the LLM's).
        visual: images → views and per-image token counts (`dc.data.visual.VisualProcessor`).
        format: "json" or "shards".
        shards: folder with `index.json`, or a brace pattern / glob of tar files (`format: shards`).
        batch_size: per-device micro-batch size (with `max_tokens`: the most samples a micro-batch may hold).
        num_workers: DataLoader workers.
        max_length: maximum tokens per sample after visual-token expansion.
        val_fraction: the last fraction of records is held out as a validation set (JSON only; 0 = none).
        prepare: called once on rank 0 before loading (e.g. generating the synthetic data).
        strict: raise on the first bad record (naming it) instead of skipping and counting it.
        overlength: "truncate" (safe cuts; the rest skipped as `too_long`) or "skip".
        group_by_modality_length: single-modality, length-sorted batches (LLaVA's sampler for stage 2).
        megabatch_factor: steps (batches) per length-sorting megabatch.
        seed: shuffling seed (the epoch is mixed in).
        batches_per_epoch: shards: exact batches per rank per epoch; None = one pass on one device, or on
            several ranks the manifest's sample count / (world_size × batch_size).
        resampled: shards: draw shards with replacement (infinite stream cut at `batches_per_epoch`).
        shuffle_buffer: shards: samples in each worker's shuffle buffer.
        pin_memory: pin host memory of batches (GPU training).
        max_tokens: token budget per micro-batch (`samples × longest`): the batch size then adapts to sample
            lengths, so memory is bounded by tokens (see `dc.data.grouping`). JSON: on the records' length
            estimates; shards: on the real token counts, with `batches_per_epoch` set. None: fixed `batch_size`.
    """

    def __init__(
        self,
        *,
        tokenizer: PreTrainedTokenizerBase,
        template: ChatTemplate,
        visual: VisualProcessor,
        train_file: str | None = None,
        image_folder: str | None = None,
        format: str = "json",  # noqa: A002 - the config key's name
        shards: str | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        max_length: int = 2048,
        val_fraction: float = 0.0,
        prepare: Callable[[], Any] | None = None,
        strict: bool = False,
        overlength: str = "truncate",
        group_by_modality_length: bool = False,
        megabatch_factor: int = 8,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        resampled: bool = False,
        shuffle_buffer: int = 1000,
        pin_memory: bool = False,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        if format not in FORMATS:
            raise ConfigError(f"data.format={format!r}: expected one of {FORMATS}")
        if format == "json" and not (train_file and image_folder):
            raise ConfigError("data.format=json needs data.train_file and data.image_folder")
        if format == "shards" and not shards:
            raise ConfigError("data.format=shards needs data.shards (a folder with index.json, or a tar pattern)")
        if prepare is not None and not callable(prepare):
            # e.g. `debug=fast data=llava_instruct`: debug=fast sizes the synthetic data's `prepare`, which this data
            # config does not have, so Hydra leaves a plain mapping behind.
            log.warning("data.prepare=%r has no _target_ (only the synthetic data is generated): ignored", prepare)
            prepare = None
        for key, value in (("batch_size", batch_size), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{key}={value!r} must be a positive integer")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers!r} must be a non-negative integer")
        if max_tokens is not None and format == "shards" and batches_per_epoch is None:
            raise ConfigError(
                "data.max_tokens with data.format=shards needs data.batches_per_epoch (how many token-budgeted "
                "batches a pass over the shards gives is not known in advance)"
            )
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < max_length):
            raise ConfigError(f"data.max_tokens={max_tokens!r} must be an integer >= data.max_length={max_length}")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ConfigError(f"data.batches_per_epoch={batches_per_epoch}: expected a positive number or null")
        self.format = format
        self.train_file = Path(train_file) if train_file else None
        self.image_folder = Path(image_folder) if image_folder else None
        self.shards = shards
        self.tokenizer = tokenizer
        self.template = template
        self.visual = visual
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_length = max_length
        self.val_fraction = val_fraction
        self.prepare = prepare
        self.strict = strict
        self.overlength = overlength
        self.group = group_by_modality_length
        self.megabatch_factor = megabatch_factor
        self.seed = seed
        self.batches_per_epoch = batches_per_epoch
        self.resampled = resampled
        self.shuffle_buffer = shuffle_buffer
        self.pin_memory = pin_memory
        self.max_tokens = max_tokens
        self.collate = Collator(tokenizer.pad_token_id)
        # Built here so that a wrong tokenizer/template or option fails before any data is read.
        self.builder = SampleBuilder(tokenizer, template, visual, max_length, overlength)
        self.train_set: LlavaJsonDataset | None = None
        self.val_set: LlavaJsonDataset | None = None
        self.shard_urls: list[str] = []
        self.manifest: dict | None = None

    def prepare_data(self) -> None:
        if self.prepare is not None:
            self.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or self.shard_urls:
            return
        if self.prepare is not None:  # idempotent; makes setup work without prepare_data (tests, eval)
            self.prepare()
        if self.format == "shards":
            self.shard_urls, self.manifest = resolve_shards(self.shards)
            return
        store = RecordStore.from_file(self.train_file)
        if len(store) == 0:
            raise ConfigError(f"data.train_file={self.train_file}: the file holds no records")
        n_val = int(len(store) * self.val_fraction)
        n_train = len(store) - n_val
        self.train_set = self._dataset(store.subset(0, n_train))
        self.val_set = self._dataset(store.subset(n_train, len(store))) if n_val else None

    def _dataset(self, store: RecordStore) -> LlavaJsonDataset:
        return LlavaJsonDataset(
            None,
            self.image_folder,
            self.tokenizer,
            self.template,
            self.visual,
            self.max_length,
            records=store,
            strict=self.strict,
            overlength=self.overlength,
        )

    def train_dataloader(self) -> DataLoader:
        """JSON: a `DataLoader` over `GroupedBatchSampler` batches; shards: a resumable `ShardLoader`."""
        self.setup()
        trainer = self.trainer  # None outside a Trainer (tests, benchmarks)
        rank, world = dist_info(trainer)
        epoch = trainer.current_epoch if trainer is not None else 0
        persistent = self.num_workers > 0
        if self.format == "shards":
            stream = self._stream(rank, world, epoch)
            return ShardLoader(
                stream,
                num_workers=self.num_workers,
                collate_fn=_identity,
                persistent_workers=persistent,
                pin_memory=self.pin_memory,
            )
        store = self.train_set.records
        sampler = GroupedBatchSampler(
            store.estimated_lengths(self.visual_tokens(store)),
            store.n_images > 0,
            self.batch_size,
            num_replicas=world,
            rank=rank,
            group=self.group,
            megabatch_factor=self.megabatch_factor,
            shuffle=True,
            seed=self.seed,
            max_tokens=self.max_tokens,
        )
        sampler.set_epoch(epoch)
        return DataLoader(
            self.train_set,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            persistent_workers=persistent,
            pin_memory=self.pin_memory,
        )

    def train_batches(self, world_size: int = 1) -> int:
        """Batches each rank gets per epoch, computed without building a loader (for the LR schedule's length)."""
        self.setup()
        if self.format == "shards":
            total = sum(s["count"] for s in self.manifest["shards"]) if self.manifest else None
            if self.batches_per_epoch is not None:
                return self.batches_per_epoch
            if total is None:
                raise ConfigError(
                    f"data.shards={self.shards}: no index.json with sample counts; set data.batches_per_epoch"
                )
            if world_size > 1 or self.resampled:
                return max(1, total // (world_size * self.batch_size))
            return one_pass_length(total, self.batch_size, self.num_workers)
        store = self.train_set.records
        # Fixed-size batches: the count does not depend on lengths. Token budgets: it does (the real estimates).
        lengths = (
            store.estimated_lengths(self.visual_tokens(store))
            if self.max_tokens is not None
            else np.zeros(len(store), dtype=np.int64)
        )
        sampler = GroupedBatchSampler(
            lengths,
            store.n_images > 0,
            self.batch_size,
            num_replicas=world_size,
            rank=0,
            group=self.group,
            megabatch_factor=self.megabatch_factor,
            shuffle=True,
            seed=self.seed,
            max_tokens=self.max_tokens,
        )
        return len(sampler)

    def visual_tokens(self, store: RecordStore) -> np.ndarray:
        """Each record's visual tokens (for length grouping): arithmetic, or image headers for size-dependent modes.

        An image whose header cannot be read counts as one plain view; the record is skipped (and counted) when
        its sample is built.
        """
        if not self.visual.size_dependent:
            return store.n_images * self.visual.plain_meta.tokens
        paths = [(i, self.image_folder / p) for i in range(len(store)) for p in store.image_paths(i)]
        fallback = self.visual.plain_meta.tokens

        def tokens(path: Path) -> int:
            try:
                with open(path, "rb") as f:
                    return self.visual.meta_for_size(image_size_from_bytes(f.read(1 << 16))).tokens
            except Exception:  # noqa: BLE001 - a header that needs more bytes, or a bad file: read it whole
                try:
                    return self.visual.meta_from_bytes(path.read_bytes()).tokens
                except Exception:  # noqa: BLE001 - bad images are the sample builder's to report
                    return fallback

        log.info("reading %d image headers for length grouping (the token count depends on the image size)", len(paths))
        with ThreadPoolExecutor(max_workers=16) as pool:
            counts = list(pool.map(tokens, [p for _, p in paths]))
        out = np.zeros(len(store), dtype=np.int64)
        np.add.at(out, np.array([i for i, _ in paths], dtype=np.int64), np.array(counts, dtype=np.int64))
        return out

    def _stream(self, rank: int, world: int, epoch: int) -> ShardStream:
        total = sum(s["count"] for s in self.manifest["shards"]) if self.manifest else None
        per_rank = self.batches_per_epoch
        if per_rank is None and (world > 1 or self.resampled):
            if total is None:
                raise ConfigError(
                    f"data.shards={self.shards}: no index.json with sample counts; set data.batches_per_epoch "
                    f"(needed with {world} ranks or data.resampled=true so that every rank runs as many batches)"
                )
            per_rank = max(1, total // (world * self.batch_size))
        hint = one_pass_length(total, self.batch_size, self.num_workers) if total is not None else None
        return ShardStream(
            self.shard_urls,
            self.builder,
            self.collate,
            self.batch_size,
            strict=self.strict,
            rank=rank,
            world_size=world,
            batches_per_rank=per_rank,
            resampled=self.resampled,
            group=self.group,
            megabatch_factor=self.megabatch_factor,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            epoch=epoch,
            length_hint=hint,
            expected_counts=self._expected_counts(),
            max_tokens=self.max_tokens,
        )

    def _expected_counts(self) -> dict[str, int]:
        if not self.manifest:
            return {}
        by_name = {s["name"]: s["count"] for s in self.manifest["shards"]}
        return {u: by_name[Path(u).name] for u in self.shard_urls if Path(u).name in by_name}

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            persistent_workers=self.num_workers > 0,
        )
