"""The LLaVA layout: a JSON list of records plus an image folder, as a map-style dataset.

Record: `{"id", "image": relative path (optional), "conversations": [{"from": "human"|"gpt", "value"}, ...]}`.
Each `<image>` becomes one `IMAGE_TOKEN_INDEX` from the template, which this dataset expands into the
connector's number of visual tokens; truncation to `max_length` happens after that expansion and never cuts
through visual tokens (such a sample is dropped and counted instead).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from dc.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dc.data.image import ImagePreprocessor
from dc.models.llms.templates import ChatTemplate

log = logging.getLogger(__name__)


def expand_visual_tokens(input_ids: list[int], labels: list[int], num_visual_tokens: int) -> tuple[list[int], list[int]]:
    """Replace each `IMAGE_TOKEN_INDEX` by `num_visual_tokens` of them (labels ignored there)."""
    ids_out: list[int] = []
    labels_out: list[int] = []
    for i, lab in zip(input_ids, labels, strict=True):
        if i == IMAGE_TOKEN_INDEX:
            ids_out.extend([IMAGE_TOKEN_INDEX] * num_visual_tokens)
            labels_out.extend([IGNORE_INDEX] * num_visual_tokens)
        else:
            ids_out.append(i)
            labels_out.append(lab)
    return ids_out, labels_out


def truncate(ids: list[int], labels: list[int], max_length: int) -> tuple[list[int], list[int]] | None:
    """Cut to `max_length`; None when the cut would split a run of visual tokens or leave nothing to learn."""
    if len(ids) <= max_length:
        return ids, labels
    if ids[max_length - 1] == IMAGE_TOKEN_INDEX and ids[max_length] == IMAGE_TOKEN_INDEX:
        return None
    ids, labels = ids[:max_length], labels[:max_length]
    if all(lab == IGNORE_INDEX for lab in labels):
        return None
    return ids, labels


class LlavaJsonDataset(Dataset):
    """LLaVA JSON + image folder → tokenised samples with their images.

    Args:
        json_path: the JSON list (or a `.jsonl` file, one record per line).
        image_folder: root that `record["image"]` is relative to.
        tokenizer: the LLM's tokenizer.
        template: the chat template (plain for stage 1).
        image_processor: turns PIL images into tensors.
        num_visual_tokens: tokens the connector emits per image.
        max_length: maximum sequence length after visual-token expansion.
        records: use these records instead of reading `json_path` (for splits).
    """

    def __init__(
        self,
        json_path: str | Path | None,
        image_folder: str | Path,
        tokenizer: PreTrainedTokenizerBase,
        template: ChatTemplate,
        image_processor: ImagePreprocessor,
        num_visual_tokens: int,
        max_length: int = 2048,
        records: list[dict] | None = None,
    ) -> None:
        self.records = records if records is not None else read_records(json_path)
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.template = template
        self.image_processor = image_processor
        self.num_visual_tokens = num_visual_tokens
        self.max_length = max_length
        self.dropped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, record: dict) -> torch.Tensor:
        path = self.image_folder / record["image"]
        with Image.open(path) as img:
            return self.image_processor(img)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        enc = self.template.encode(record["conversations"], self.tokenizer)
        ids, labels = expand_visual_tokens(enc.input_ids, enc.labels, self.num_visual_tokens)
        cut = truncate(ids, labels, self.max_length)
        if cut is None:
            raise ValueError(f"record {record.get('id')!r} is longer than max_length={self.max_length} after expansion")
        ids, labels = cut
        n_images = enc.input_ids.count(IMAGE_TOKEN_INDEX)
        if "image" in record:
            pixels = self.load_image(record).unsqueeze(0)
        else:
            size = self.image_processor.processor.crop_size if hasattr(self.image_processor.processor, "crop_size") else None
            pixels = torch.zeros(0, 3, 1, 1) if size is None else torch.zeros(0, 3, size["height"], size["width"])
        if pixels.shape[0] != n_images:
            raise ValueError(f"record {record.get('id')!r} has {n_images} <image> tags but {pixels.shape[0]} images")
        return {"id": record.get("id"), "input_ids": ids, "labels": labels, "pixel_values": pixels}


def read_records(path: str | Path) -> list[dict]:
    """Read a LLaVA JSON list or a JSONL file."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data
