"""Batched greedy generation for evaluation: prompts built with the model's chat template, left padding,
the KV cache, and stopping on the template's end tokens."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from dc.constants import IMAGE_PLACEHOLDER
from dc.data.collate import Collator
from dc.data.llava_json import expand_visual_tokens
from dc.models.llms.templates import get_template
from dc.models.vlm import VLM


def prompt_sample(vlm: VLM, text: str, images: torch.Tensor | None, template_name: str | None = None) -> dict[str, Any]:
    """One generation input: template prompt for `text`, visual tokens expanded, images [n, 3, H, W].

    `text` carries `<image>` where the image goes (LLaVA puts it first: "<image>\\nQuestion").
    """
    template = get_template(template_name) if template_name else vlm.llm.template
    ids = template.prompt(text, vlm.llm.tokenizer)
    ids, _ = expand_visual_tokens(ids, [0] * len(ids), vlm.num_visual_tokens)
    n_tags = text.count(IMAGE_PLACEHOLDER)
    n_images = 0 if images is None else images.shape[0]
    if n_tags != n_images:
        raise ValueError(f"prompt has {n_tags} <image> tags but {n_images} images were given")
    size = vlm.encoder.layout.image_size
    return {"input_ids": ids, "pixel_values": images if images is not None else torch.zeros(0, 3, size, size)}


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def generate_texts(
    vlm: VLM,
    samples: Sequence[dict[str, Any]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    **generation: Any,
) -> list[str]:
    """Answers for `samples` (from `prompt_sample`), in order; greedy with the KV cache by default.

    `generation` overrides `generate` settings (`use_cache`, `do_sample`, `num_beams`, `temperature`).
    """
    tok = vlm.llm.tokenizer
    collate = Collator(tok.pad_token_id, padding_side="left")
    stop = vlm.llm.template.stop_token_ids(tok)
    device = next(vlm.llm.parameters()).device
    answers: list[str] = []
    was_training = vlm.training
    vlm.eval()
    try:
        for chunk in _batches(samples, batch_size):
            batch = collate(list(chunk))
            pixels = batch["pixel_values"].to(device) if batch["pixel_values"] is not None else None
            out = vlm.generate(
                batch["input_ids"].to(device), batch["attention_mask"].to(device), pixels, max_new_tokens, stop,
                **generation,
            )
            answers.extend(tok.decode(row, skip_special_tokens=True).strip() for row in out)
    finally:
        vlm.train(was_training)
    return answers
