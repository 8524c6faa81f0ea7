"""Build encoders, connectors, LLMs and VLMs of a given shape directly from the `dc` classes (random weights)."""

from __future__ import annotations

from typing import Any

import torch

from dc.bench.shapes import LlmShape, VitShape
from dc.constants import IMAGE_TOKEN_INDEX
from dc.models.connectors import (
    Connector,
    DenseChannelIntegration,
    MLPConnector,
    SparseChannelIntegration,
    SparseTokenIntegration,
)
from dc.models.encoders.base import EncoderLayout
from dc.models.encoders.hf_vision import HFVisionEncoder
from dc.models.llms.hf_causal import LanguageModel
from dc.models.vlm import VLM

CONNECTORS = ("mlp", "sci", "dci", "sti", "dci_efficient")


def layout(vit: VitShape) -> EncoderLayout:
    """The `EncoderLayout` of a CLIP-style shape (one CLS token)."""
    return EncoderLayout("bench_clip", vit.num_layers, vit.hidden_size, vit.image_size, vit.patch_size, 1)


def build_connector(kind: str, vit: VitShape, llm_width: int) -> Connector:
    """One of `CONNECTORS` with the figure's layers / groups (`dci_efficient`: bilinear ×2 pre-projector)."""
    lay = layout(vit)
    if kind == "mlp":
        return MLPConnector(lay, llm_width)
    if kind == "sci":
        return SparseChannelIntegration(lay, llm_width, layers=list(vit.layers))
    if kind == "sti":
        return SparseTokenIntegration(lay, llm_width, layers=list(vit.layers), pool=8)
    if kind in ("dci", "dci_efficient"):
        down = {"mode": "bilinear", "factor": 2, "position": "pre"} if kind == "dci_efficient" else None
        # groups are inclusive [first, last] ranges, as in configs/encoder/*.yaml
        return DenseChannelIntegration(lay, llm_width, groups=[list(g) for g in vit.groups], downsample=down)
    raise ValueError(f"unknown connector {kind!r}: expected one of {CONNECTORS}")


def build_llm(shape: LlmShape, dtype: str = "float32") -> LanguageModel:
    """A random Llama of `shape` with the built-in tiny tokenizer (`vocab_size` None: the tokenizer's size)."""
    config: dict[str, Any] = {
        "model_type": "llama",
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.heads,
        "intermediate_size": shape.mlp,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }
    if shape.vocab_size is not None:
        config["vocab_size"] = shape.vocab_size
    return LanguageModel(
        template="vicuna_v1", hidden_size=shape.hidden_size, tokenizer="builtin:tiny", config=config, dtype=dtype
    )


def build_vlm(kind: str, vit: VitShape, llm: LanguageModel, dtype: str = "float32") -> VLM:
    """A frozen random CLIP-style tower + connector `kind` + the given (shared or own) LLM."""
    connector = build_connector(kind, vit, llm.hidden_size)
    encoder = HFVisionEncoder(
        connector.layout,
        connector.taps,
        family="clip",
        config={"intermediate_size": vit.mlp, "num_attention_heads": vit.heads},
        dtype=dtype,
    )
    return VLM(encoder, connector.to(getattr(torch, dtype)), llm)


def make_batch(vlm: VLM, batch: int, text_tokens: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """One image per sample: `num_visual_tokens` IMAGE_TOKEN_INDEX slots after 1 text token, then text; all labelled."""
    gen = torch.Generator().manual_seed(seed)
    vocab = vlm.llm.model.get_input_embeddings().num_embeddings
    n_vis = vlm.num_visual_tokens
    text = torch.randint(3, vocab - 1, (batch, text_tokens), generator=gen)
    vis = torch.full((batch, n_vis), IMAGE_TOKEN_INDEX)
    input_ids = torch.cat([text[:, :1], vis, text[:, 1:]], dim=1)
    labels = input_ids.masked_fill(input_ids == IMAGE_TOKEN_INDEX, -100)
    size = vlm.encoder.layout.image_size
    pixels = torch.randn(batch, 3, size, size, generator=gen)
    out = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": pixels,
        "labels": labels,
    }
    return {k: v.to(device) for k, v in out.items()}
