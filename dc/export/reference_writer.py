"""Write directories in the Dense Connector reference's (LLaVA's) layout, for tests of `dc.export.reference`.

The layout is what the reference's training saves: a full-model directory has a `config.json`
of `model_type: llava_llama` (the Llama config plus `mm_vision_tower`, `mm_hidden_size`,
`mm_vision_select_layer`, `mm_projector_type`, `mm_dense_connector_type` ...), the weights under LlavaLlama names
(`model.layers...`, `lm_head.weight`, `model.mm_projector.{0,2}.*`), as one file or shards with an index json, and
the tokenizer; a stage-1 directory holds `mm_projector.bin` (and optionally `config.json`). Old-transformers
artefacts (`rotary_emb.inv_freq` buffers) and vision-tower copies can be included to exercise the importer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def reference_config(
    llm: PreTrainedModel,
    *,
    vision_tower: str,
    mm_hidden_size: int,
    dense_connector_type: str | None,
    select_layer: int = -2,
) -> dict[str, Any]:
    """A reference `config.json` for a Llama `llm` (`dense_connector_type=None`: LLaVA-1.5, key absent)."""
    config = llm.config.to_dict()
    config.update(
        model_type="llava_llama",
        architectures=["LlavaLlamaForCausalLM"],
        mm_vision_tower=vision_tower,
        mm_hidden_size=mm_hidden_size,
        mm_vision_select_layer=select_layer,
        mm_vision_select_feature="patch",
        mm_projector_type="mlp2x_gelu",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        mm_patch_merge_type="flat",
        image_aspect_ratio="pad",
        tokenizer_model_max_length=2048,
        tokenizer_padding_side="right",
        tune_mm_mlp_adapter=False,
        use_mm_proj=True,
    )
    if dense_connector_type is not None:
        config["mm_dense_connector_type"] = dense_connector_type
    return config


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path, metadata={"format": "pt"})
    else:
        torch.save(state, path)


def write_reference_dir(
    out_dir: str | Path,
    *,
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    projector: dict[str, torch.Tensor],
    vision_tower: str,
    mm_hidden_size: int,
    dense_connector_type: str | None,
    select_layer: int = -2,
    fmt: str = "safetensors",
    shards: int = 1,
    extra: dict[str, torch.Tensor] | None = None,
    stage1: bool = False,
    stage1_config: bool = True,
) -> Path:
    """Write a reference-layout directory.

    Args:
        out_dir: directory to create.
        llm: a Llama causal LM (its `model.*` and `lm_head.weight` are written).
        tokenizer: saved beside the weights.
        projector: `{"0.weight", "0.bias", "2.weight", "2.bias"}` of the mlp2x_gelu projector.
        vision_tower: `mm_vision_tower` (hub id or a path; the reference loads the tower from there).
        mm_hidden_size: the projector's input width.
        dense_connector_type: "sti" | "sci" | "dci", or None for LLaVA-1.5 (key absent).
        select_layer: `mm_vision_select_layer`.
        fmt: "safetensors" (`model*.safetensors`) or "bin" (`pytorch_model*.bin`).
        shards: number of weight files (>1 writes an index json).
        extra: more tensors to store (e.g. stale `rotary_emb.inv_freq` buffers, a vision tower copy).
        stage1: write only `mm_projector.bin` (stage-1 output), plus `config.json` when `stage1_config`.

    Returns:
        The directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = reference_config(
        llm, vision_tower=vision_tower, mm_hidden_size=mm_hidden_size,
        dense_connector_type=dense_connector_type, select_layer=select_layer,
    )  # fmt: skip
    mm = {f"model.mm_projector.{k}": v.detach().clone() for k, v in projector.items()}
    if stage1:
        torch.save(mm, out / "mm_projector.bin")
        if stage1_config:
            (out / "config.json").write_text(json.dumps(config, indent=2))
        return out
    state = {k: v.detach().clone() for k, v in llm.state_dict().items()}
    state.update(mm)
    state.update(extra or {})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(out)
    stem, suffix = ("model", ".safetensors") if fmt == "safetensors" else ("pytorch_model", ".bin")
    if shards <= 1:
        _save(state, out / f"{stem}{suffix}")
        return out
    keys = list(state)
    size = -(-len(keys) // shards)
    weight_map = {}
    for n in range(shards):
        name = f"{stem}-{n + 1:05d}-of-{shards:05d}{suffix}"
        part = {k: state[k] for k in keys[n * size : (n + 1) * size]}
        _save(part, out / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
        "weight_map": weight_map,
    }
    (out / f"{stem}{suffix}.index.json").write_text(json.dumps(index, indent=2))
    return out
