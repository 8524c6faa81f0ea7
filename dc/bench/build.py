"""Benchmark models composed from `configs/` (the same configs train.py uses) with shape overrides.

A figure's model is `train.yaml` with `encoder=tiny_clip connector=<kind> llm=tiny` and the figure's shape written
over the layout, widths and depths, so what the benchmark measures is what train.py builds: the same classes,
the same YAML, only bigger or smaller. Weights are random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import dc
from dc.bench.shapes import LlmShape, VitShape
from dc.constants import IMAGE_TOKEN_INDEX
from dc.models.builder import build_vlm as build_from_config
from dc.models.visual import VisualMeta
from dc.models.vlm import VLM

CONNECTORS = ("mlp", "sci", "dci", "sti", "dci_efficient")
CONFIGS = Path(dc.__file__).resolve().parents[1] / "configs"


def _list(values: Any) -> str:
    return "[" + ",".join(_list(v) if isinstance(v, (list, tuple)) else str(v) for v in values) + "]"


def model_config(kind: str, vit: VitShape, llm: LlmShape, dtype: str = "float32", *extra: str) -> DictConfig:
    """`train.yaml` composed for connector `kind` with the figure's ViT and LLM shapes (CLIP layout, one CLS)."""
    if kind not in CONNECTORS:
        raise ValueError(f"unknown connector {kind!r}: expected one of {CONNECTORS}")
    overrides = [
        "encoder=tiny_clip",
        f"connector={kind}",
        "llm=tiny",
        "run_name=bench",
        "paths.output_dir=.",
        f"encoder.layout.num_layers={vit.num_layers}",
        f"encoder.layout.hidden_size={vit.hidden_size}",
        f"encoder.layout.image_size={vit.image_size}",
        f"encoder.layout.patch_size={vit.patch_size}",
        f"encoder.default_layers={_list(vit.layers)}",
        f"encoder.default_groups={_list(vit.groups)}",
        f"encoder.model.config.intermediate_size={vit.mlp}",
        f"encoder.model.config.num_attention_heads={vit.heads}",
        f"encoder.model.dtype={dtype}",
        f"llm.hidden_size={llm.hidden_size}",
        f"llm.config.num_hidden_layers={llm.num_layers}",
        f"llm.config.num_attention_heads={llm.heads}",
        f"llm.config.num_key_value_heads={llm.heads}",
        f"llm.config.intermediate_size={llm.mlp}",
        "llm.config.max_position_embeddings=4096",
        f"llm.dtype={dtype}",
        *extra,
    ]
    if llm.vocab_size is not None:
        overrides.append(f"+llm.config.vocab_size={llm.vocab_size}")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def build_vlm(kind: str, vit: VitShape, llm: LlmShape, dtype: str = "float32", *extra: str) -> VLM:
    """A frozen random tower + connector `kind` + a random LLM, as train.py builds them from the composed config."""
    vlm = build_from_config(model_config(kind, vit, llm, dtype, *extra))
    vlm.connector.to(getattr(torch, dtype))
    vlm.encoder.requires_grad_(False)
    return vlm


def share_llm(vlms: list[VLM]) -> None:
    """Give every VLM the first one's LLM weights (so the sides differ only in the connector)."""
    state = vlms[0].llm.state_dict()
    for vlm in vlms[1:]:
        vlm.llm.load_state_dict(state)


def make_batch(vlm: VLM, batch: int, text_tokens: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """One image per sample: its visual slots after 1 text token, then text; all text labelled."""
    gen = torch.Generator().manual_seed(seed)
    vocab = vlm.llm.model.get_input_embeddings().num_embeddings
    n_vis = vlm.num_visual_tokens
    text = torch.randint(3, vocab - 1, (batch, text_tokens), generator=gen)
    vis = torch.full((batch, n_vis), IMAGE_TOKEN_INDEX)
    input_ids = torch.cat([text[:, :1], vis, text[:, 1:]], dim=1)
    labels = input_ids.masked_fill(input_ids == IMAGE_TOKEN_INDEX, -100)
    size = vlm.encoder.layout.input_size
    pixels = torch.randn(batch, 3, size, size, generator=gen)
    out: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": pixels,
        "labels": labels,
    }
    out = {k: v.to(device) for k, v in out.items()}
    out["visual"] = [VisualMeta(views=1, tokens=n_vis)] * batch
    return out
