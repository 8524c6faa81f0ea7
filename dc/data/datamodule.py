"""The LightningDataModule for LLaVA-layout data (the synthetic task and real JSON datasets)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from dc.data.collate import Collator
from dc.data.image import ImagePreprocessor
from dc.data.llava_json import LlavaJsonDataset, read_records
from dc.models.llms.templates import ChatTemplate


class LlavaDataModule(L.LightningDataModule):
    """Train (and optional validation) loaders over a LLaVA JSON file.

    The model-dependent pieces (tokenizer, template, image processor, visual-token count) are given by the
    pipeline; everything else comes from the `data` config.

    Args:
        train_file: LLaVA JSON list (or JSONL) of training records.
        image_folder: folder the records' `image` paths are relative to.
        tokenizer, template, image_processor, num_visual_tokens: from the model config.
        batch_size: per-device micro-batch size.
        num_workers: DataLoader workers.
        max_length: maximum tokens per sample after visual-token expansion.
        val_fraction: the last fraction of records is held out as a validation set (0 = none).
        prepare: called once on rank 0 before loading (e.g. generating the synthetic data).
    """

    def __init__(
        self,
        *,
        train_file: str,
        image_folder: str,
        tokenizer: PreTrainedTokenizerBase,
        template: ChatTemplate,
        image_processor: ImagePreprocessor,
        num_visual_tokens: int,
        batch_size: int = 16,
        num_workers: int = 0,
        max_length: int = 2048,
        val_fraction: float = 0.0,
        prepare: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        self.train_file = Path(train_file)
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.template = template
        self.image_processor = image_processor
        self.num_visual_tokens = num_visual_tokens
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_length = max_length
        self.val_fraction = val_fraction
        self.prepare = prepare
        self.train_set: LlavaJsonDataset | None = None
        self.val_set: LlavaJsonDataset | None = None

    def prepare_data(self) -> None:
        if self.prepare is not None:
            self.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.prepare is not None:  # idempotent; makes setup work without prepare_data (tests, eval)
            self.prepare()
        records = read_records(self.train_file)
        n_val = int(len(records) * self.val_fraction)
        train, val = (records[:-n_val], records[-n_val:]) if n_val else (records, [])
        self.train_set = self._dataset(train)
        self.val_set = self._dataset(val) if val else None

    def _dataset(self, records: list[dict]) -> LlavaJsonDataset:
        return LlavaJsonDataset(
            None,
            self.image_folder,
            self.tokenizer,
            self.template,
            self.image_processor,
            self.num_visual_tokens,
            self.max_length,
            records=records,
        )

    def _loader(self, dataset: LlavaJsonDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=Collator(self.tokenizer.pad_token_id),
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []
