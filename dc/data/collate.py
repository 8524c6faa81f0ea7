"""Batching: dynamic padding of token sequences and concatenation of images in sample order."""

from __future__ import annotations

from typing import Any

import torch

from dc.constants import IGNORE_INDEX


class Collator:
    """Pad a list of samples into a batch.

    Each sample has `input_ids` and `labels` (1-D, visual tokens already expanded) and `pixel_values`
    [n_images, 3, H, W] (n_images may be 0). Right padding for training, left padding for generation.

    Args:
        pad_token_id: id used for padding.
        padding_side: "right" or "left".
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side={padding_side!r}: expected 'right' or 'left'")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(s["input_ids"]) for s in samples)
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
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixel_values}
        batch["ids"] = [s.get("id") for s in samples]
        for key in ("answer", "category"):
            if key in samples[0]:
                batch[key] = [s[key] for s in samples]
        return batch
