"""Batched generation for evaluation: prompts built with the model's chat template, each visual input expanded to
its own token count, left padding, the KV cache, and stopping on the template's end tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from dc.data.collate import Collator
from dc.data.records import expand_visual_tokens
from dc.models.llms.templates import ChatTemplate
from dc.models.visual.base import VisualMeta
from dc.models.vlm import VLM

VisualInput = tuple[torch.Tensor, VisualMeta]
"""One visual input: its views [V, 3, H, W] and its meta (from `dc.data.visual.VisualProcessor`)."""


def prompt_sample(
    vlm: VLM, text: str, inputs: Sequence[VisualInput] = (), template: ChatTemplate | None = None
) -> dict[str, Any]:
    """One generation input: the template's prompt for `text` with the k-th `<image>` expanded for `inputs[k]`.

    `text` carries `<image>` where each input goes (LLaVA puts a single image first: "<image>\\nQuestion").

    Raises:
        ValueError: the number of `<image>` tags differs from the number of inputs.
    """
    template = template or vlm.llm.template
    ids = template.prompt(text, vlm.llm.tokenizer)
    ids, _ = expand_visual_tokens(ids, [0] * len(ids), [meta.tokens for _, meta in inputs])
    size = vlm.encoder.layout.input_size
    pixels = torch.cat([views for views, _ in inputs]) if inputs else torch.zeros(0, 3, size, size)
    return {"input_ids": ids, "pixel_values": pixels, "visual": [meta for _, meta in inputs]}


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def generate_batch(
    vlm: VLM, batch: dict[str, Any], max_new_tokens: int, stop: Sequence[int], **generation: Any
) -> torch.Tensor:
    """Generated ids [B, new] for one left-padded collated batch, moved to the model's device and dtype."""
    device = next(vlm.llm.parameters()).device
    dtype = next(vlm.connector.parameters()).dtype
    pixels = batch["pixel_values"].to(device, dtype) if batch["pixel_values"] is not None else None
    return vlm.generate(
        batch["input_ids"].to(device),
        batch["attention_mask"].to(device),
        pixels,
        max_new_tokens,
        stop,
        visual=batch["visual"],
        **generation,
    )


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
    answers: list[str] = []
    was_training = vlm.training
    vlm.eval()
    try:
        for chunk in _batches(samples, batch_size):
            out = generate_batch(vlm, collate(list(chunk)), max_new_tokens, stop, **generation)
            answers.extend(tok.decode(row, skip_special_tokens=True).strip() for row in out)
    finally:
        vlm.train(was_training)
    return answers
