"""Batching: dynamic padding of token sequences, views concatenated in sample order, and batch statistics.

Model inputs: `input_ids`, `labels`, `attention_mask`, `pixel_values` ([V, 3, H, W]: every view of every visual
input of the batch, samples in order; None when there is none) and `visual` (one `VisualMeta` per input, same
order), from which the VLM merges and splices (`dc.models.vlm`).

Besides the model inputs a training batch carries what the LightningModule logs (see `dc.data.stats`):

* `skipped`: `{reason: count}` of the bad records dropped since the previous batch of the same loader worker
  (map-style: the `Skipped` markers among this batch's samples; shards: the records the worker skipped while
  filling this batch). Summing over batches gives the run's totals.
* `truncated`: how many samples of this batch were cut to `max_length`.
* `num_tokens` / `num_padding`: real and padding positions of `input_ids` (padding fraction =
  `num_padding / (num_tokens + num_padding)`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from dc.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dc.data.records import Skipped


class Collator:
    """Pad a list of samples into a batch, dropping (and counting) `Skipped` markers.

    Each sample has `input_ids` and `labels` (1-D, visual tokens already expanded), `pixel_values` [V, 3, H, W]
    (V may be 0) and `visual` (its inputs' metas). Right padding for training, left padding for generation.

    Args:
        pad_token_id: id used for padding.
        padding_side: "right" or "left".
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side={padding_side!r}: expected 'right' or 'left'")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, items: list[dict[str, Any] | Skipped]) -> dict[str, Any]:
        skipped = Counter(s.reason for s in items if isinstance(s, Skipped))
        samples = [s for s in items if not isinstance(s, Skipped)]
        longest = max((len(s["input_ids"]) for s in samples), default=0)
        ids = torch.full((len(samples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), longest), dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            cols = slice(0, n) if self.padding_side == "right" else slice(longest - n, longest)
            ids[row, cols] = torch.as_tensor(s["input_ids"])
            if "labels" in s:
                labels[row, cols] = torch.as_tensor(s["labels"])
            mask[row, cols] = 1
        images = [s["pixel_values"] for s in samples if s["pixel_values"].shape[0] > 0]
        pixel_values = torch.cat(images) if images else None
        visual = [m for s in samples for m in s.get("visual", ())]
        slots = int((ids == IMAGE_TOKEN_INDEX).sum())
        if slots != sum(m.tokens for m in visual):
            raise ValueError(
                f"batch has {slots} visual-token slots but its inputs declare {sum(m.tokens for m in visual)}"
            )
        num_tokens = int(mask.sum())
        batch = {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": mask,
            "pixel_values": pixel_values,
            "visual": visual,
            "ids": [s.get("id") for s in samples],
            "skipped": dict(skipped),
            "truncated": sum(bool(s.get("truncated")) for s in samples),
            "num_tokens": num_tokens,
            "num_padding": int(mask.numel()) - num_tokens,
        }
        for key in ("answer", "category"):
            if samples and key in samples[0]:
                batch[key] = [s[key] for s in samples]
        return batch
