"""dc vision encoder → the `vision_config` and `vision_tower` weights of a stock `LlavaForConditionalGeneration`.

Stock Llava builds `AutoModel.from_config(vision_config)` with every layer the config declares. dc builds only up to
the deepest tapped block, so the exported `num_hidden_layers` is that depth: block i's output depends only on
blocks ≤ i, so `hidden_states[i]` is the same for every index used, and the exporter writes indices non-negative.

* `HFVisionEncoder` (CLIP / SigLIP): dc's tower *is* a `CLIPVisionModel` / `SiglipVisionModel`; its weights are
  copied as they are. dc replaced `post_layernorm` by an identity and dropped SigLIP's pooling head; the stock
  tower has a post-LayerNorm (applied only to `last_hidden_state` / the pooled CLS, which Llava never reads), so it
  is written as an identity LayerNorm (weight 1, bias 0), and the head is switched off (`vision_use_head=False`).
* `TimmViTEncoder` holding an OpenAI-CLIP ViT (class token, pre-LayerNorm, fused qkv, QuickGELU or exact GELU, no
  LayerScale / qk-norm / registers) maps onto `CLIPVisionModel`: the fused `qkv` is split into q/k/v, the class
  token and position embedding are reshaped, `norm_pre` becomes `pre_layrnorm`. Any other timm model is refused.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionConfig

from dc.export.errors import ExportError
from dc.models.encoders.base import VisionEncoder
from dc.models.encoders.hf_vision import HFVisionEncoder
from dc.models.encoders.timm_vit import TimmViTEncoder


def export_vision_tower(encoder: VisionEncoder, dtype: torch.dtype) -> tuple[Any, dict[str, torch.Tensor]]:
    """The stock vision config and `vision_tower` state dict (keys relative to the tower) of `encoder`.

    Raises:
        ExportError: the encoder has no exact stock HF vision class.
    """
    if isinstance(encoder, HFVisionEncoder):
        config, state = _hf_tower(encoder)
    elif isinstance(encoder, TimmViTEncoder):
        config, state = _timm_clip_tower(encoder)
    else:
        raise ExportError(
            f"encoder {type(encoder).__name__} ('{encoder.layout.name}') has no stock Hugging Face vision class "
            f"to export to (supported: HFVisionEncoder CLIP/SigLIP, TimmViTEncoder OpenAI-CLIP ViTs)"
        )
    return config, {k: v.detach().to(dtype=dtype, copy=True) for k, v in state.items()}


def _identity_norm(width: int) -> dict[str, torch.Tensor]:
    """An identity LayerNorm's affine parameters (it still normalises; only outputs Llava never reads use it)."""
    return {"post_layernorm.weight": torch.ones(width), "post_layernorm.bias": torch.zeros(width)}


def _hf_tower(encoder: HFVisionEncoder) -> tuple[Any, dict[str, torch.Tensor]]:
    model = encoder.model
    config = copy.deepcopy(model.config)
    built = len(model.encoder.layers)
    if built != encoder.depth or config.num_hidden_layers != built:
        raise ExportError(
            f"encoder '{encoder.layout.name}': the tower holds {built} blocks, its config says "
            f"{config.num_hidden_layers} and the taps need {encoder.depth}; cannot tell which blocks are real"
        )
    if encoder.family == "siglip":
        config.vision_use_head = False
    state = dict(model.state_dict())
    if any(k.startswith("post_layernorm.") for k in state) or not isinstance(model.post_layernorm, nn.Identity):
        raise ExportError(f"encoder '{encoder.layout.name}': expected dc's identity post_layernorm")
    state.update(_identity_norm(config.hidden_size))
    return config, state


def _timm_clip_tower(encoder: TimmViTEncoder) -> tuple[CLIPVisionConfig, dict[str, torch.Tensor]]:
    m = encoder.model
    name = f"encoder '{encoder.layout.name}' (timm {encoder.model_name})"
    blocks = list(m.blocks)
    problems = _timm_clip_problems(m, blocks)
    if problems:
        raise ExportError(
            f"{name} cannot be exported exactly as a Hugging Face CLIPVisionModel: " + "; ".join(problems)
        )
    width = m.embed_dim
    first = blocks[0]
    config = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=first.mlp.fc1.out_features,
        num_hidden_layers=len(blocks),
        num_attention_heads=first.attn.num_heads,
        num_channels=m.patch_embed.proj.in_channels,
        image_size=encoder.layout.image_size,
        patch_size=encoder.layout.patch_size,
        hidden_act="quick_gelu" if type(first.mlp.act).__name__ == "QuickGELU" else "gelu",
        layer_norm_eps=first.norm1.eps,
    )
    state: dict[str, torch.Tensor] = {
        "embeddings.class_embedding": m.cls_token.reshape(width),
        "embeddings.patch_embedding.weight": m.patch_embed.proj.weight,
        "embeddings.position_embedding.weight": m.pos_embed.reshape(-1, width),
        "pre_layrnorm.weight": m.norm_pre.weight,
        "pre_layrnorm.bias": m.norm_pre.bias,
    }
    for i, block in enumerate(blocks):
        p = f"encoder.layers.{i}."
        same = {"layer_norm1": block.norm1, "self_attn.out_proj": block.attn.proj, "layer_norm2": block.norm2,
                "mlp.fc1": block.mlp.fc1, "mlp.fc2": block.mlp.fc2}  # fmt: skip
        for name, module in same.items():
            state[p + name + ".weight"], state[p + name + ".bias"] = module.weight, module.bias
        # timm packs [q; k; v] along the output rows of one Linear; HF CLIP has three.
        qkv = zip(("q_proj", "k_proj", "v_proj"), block.attn.qkv.weight.chunk(3), block.attn.qkv.bias.chunk(3))
        for name, weight, bias in qkv:
            state[p + f"self_attn.{name}.weight"], state[p + f"self_attn.{name}.bias"] = weight, bias
    state.update(_identity_norm(width))
    return config, state


def _timm_clip_problems(m: nn.Module, blocks: list[nn.Module]) -> list[str]:
    """What in a timm ViT differs from HF CLIP's vision transformer (empty: it maps exactly)."""
    problems = []
    if getattr(m, "cls_token", None) is None or m.num_prefix_tokens != 1:
        problems.append(f"needs exactly one class token (has {m.num_prefix_tokens} prefix tokens)")
    if getattr(m, "no_embed_class", False):
        problems.append("position embedding excludes the class token (no_embed_class=True)")
    if not isinstance(m.norm_pre, nn.LayerNorm):
        problems.append(f"needs a pre-LayerNorm (norm_pre is {type(m.norm_pre).__name__})")
    if m.patch_embed.proj.bias is not None or not isinstance(m.patch_embed.norm, nn.Identity):
        problems.append("patch embedding must be a bias-free convolution without a norm")
    if not blocks:
        problems.append("no transformer blocks")
    eps = {m.norm_pre.eps} if isinstance(m.norm_pre, nn.LayerNorm) else set()
    for i, b in enumerate(blocks):
        attn, mlp = b.attn, b.mlp
        extras = [
            n for n in ("ls1", "ls2", "drop_path1", "drop_path2") if not isinstance(getattr(b, n, None), nn.Identity)
        ]
        extras += [
            f"attn.{n}"
            for n in ("q_norm", "k_norm", "norm")
            if not isinstance(getattr(attn, n, nn.Identity()), nn.Identity)
        ]
        extras += [f"mlp.{n}" for n in ("norm",) if not isinstance(getattr(mlp, n, nn.Identity()), nn.Identity)]
        if extras:
            problems.append(f"block {i} has {extras} (LayerScale / qk-norm / extra norms have no CLIP equivalent)")
        if not (hasattr(attn, "qkv") and attn.qkv.bias is not None and hasattr(mlp, "fc1")):
            problems.append(f"block {i} is not a fused-qkv (with bias) attention + fc1/fc2 MLP block")
            continue
        act = type(mlp.act).__name__
        if act not in ("QuickGELU", "GELU") or (act == "GELU" and mlp.act.approximate != "none"):
            problems.append(f"block {i} MLP activation {act} is neither QuickGELU nor exact GELU")
        if not (isinstance(b.norm1, nn.LayerNorm) and isinstance(b.norm2, nn.LayerNorm)):
            problems.append(f"block {i} norms are not LayerNorms")
            continue
        eps |= {b.norm1.eps, b.norm2.eps}
        if abs(attn.scale - attn.head_dim**-0.5) > 1e-12:
            problems.append(f"block {i} attention scale {attn.scale} is not head_dim^-0.5")
    if len(eps) > 1:
        problems.append(f"LayerNorm eps differ between layers ({sorted(eps)}); HF CLIP has one layer_norm_eps")
    return problems
