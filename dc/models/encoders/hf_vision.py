"""Hugging Face CLIP and SigLIP vision towers, run only as deep as the connector needs.

The same code builds the offline tiny towers (random weights from a config) and the real ones
(`from_pretrained` from a hub id or a local directory). Blocks deeper than the deepest tap are never built,
and SigLIP's attention-pool head and both towers' post-LayerNorms are dropped: no hidden state DC uses
passes through them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from dc.models.encoders.base import EncoderLayout, Tap, VisionEncoder
from dc.models.hub import from_pretrained
from dc.utils.errors import ConfigError

_FAMILIES = {
    "clip": (CLIPVisionConfig, CLIPVisionModel),
    "siglip": (SiglipVisionConfig, SiglipVisionModel),
}

_PREFIX_TOKENS = {"clip": 1, "siglip": 0}


class HFVisionEncoder(VisionEncoder):
    """A CLIP or SigLIP vision tower from `transformers`.

    Args:
        layout: the full model's layout (validated against the loaded config).
        taps: the features the connector asks for.
        family: "clip" or "siglip" (chosen by the config file, never guessed from a name).
        pretrained: hub id or local directory; None builds random weights from `config`.
        config: config values for random init (tiny models) or overrides for the pretrained config.
        dtype: parameter dtype name ("float32", "bfloat16", ...).
        attn_implementation: "sdpa" (default), "eager" or "flash_attention_2".
        freeze: keep the tower frozen and run it under `no_grad`.
        micro_batch: images run through the blocks at a time (None: all); see `VisionEncoder`.
        compile: compile the blocks for training; see `VisionEncoder`.
    """

    def __init__(
        self,
        layout: EncoderLayout,
        taps: Sequence[Tap],
        *,
        family: str,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        freeze: bool = True,
        micro_batch: int | None = None,
        compile: bool | Mapping[str, Any] = False,  # noqa: A002 - the config key's name
    ) -> None:
        super().__init__(layout, taps, freeze, micro_batch, compile)
        if family not in _FAMILIES:
            raise ConfigError(f"encoder.family={family!r}: expected one of {sorted(_FAMILIES)}")
        config_cls, model_cls = _FAMILIES[family]
        prefix = _PREFIX_TOKENS[family]
        if layout.num_prefix_tokens != prefix:
            raise ConfigError(
                f"encoder.layout.num_prefix_tokens={layout.num_prefix_tokens} but a {family} tower has {prefix} "
                f"(CLIP: one CLS token; SigLIP: none)"
            )
        overrides = dict(config or {})
        # Build only the blocks a tap needs; SigLIP's pooling head is never used by a connector.
        overrides["num_hidden_layers"] = self.depth
        if family == "siglip":
            overrides["vision_use_head"] = False
        torch_dtype = getattr(torch, dtype)
        if pretrained:
            hf_config = from_pretrained(AutoConfig.from_pretrained, pretrained, "encoder.model.pretrained")
            hf_config = getattr(hf_config, "vision_config", hf_config)
            self._check_layout(hf_config)
            skipped = _skipped_weights(hf_config.num_hidden_layers, self.depth)
            for key, value in overrides.items():
                setattr(hf_config, key, value)
            model = from_pretrained(
                _ignoring(model_cls, skipped).from_pretrained,
                pretrained,
                "encoder.model.pretrained",
                config=hf_config,
                dtype=torch_dtype,
                attn_implementation=attn_implementation,
            )
        else:
            hf_config = config_cls(
                hidden_size=layout.hidden_size,
                image_size=layout.image_size,
                patch_size=layout.patch_size,
                **overrides,
            )
            hf_config._attn_implementation = attn_implementation
            model = model_cls(hf_config).to(torch_dtype)
        model.post_layernorm = nn.Identity()
        self.model = model
        self.family = family
        self._apply_freeze()

    def _check_layout(self, hf_config: Any) -> None:
        found = {
            "num_layers": hf_config.num_hidden_layers,
            "hidden_size": hf_config.hidden_size,
            "image_size": hf_config.image_size,
            "patch_size": hf_config.patch_size,
        }
        for key, value in found.items():
            if getattr(self.layout, key) != value:
                raise ConfigError(
                    f"encoder.layout.{key}={getattr(self.layout, key)} does not match the checkpoint's "
                    f"config ({value}) for encoder '{self.layout.name}'"
                )

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.embeddings(pixel_values)
        pre_norm = getattr(self.model, "pre_layrnorm", None)
        return pre_norm(hidden) if pre_norm is not None else hidden

    def blocks(self) -> Sequence[nn.Module]:
        return self.model.encoder.layers

    def run_block(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return block(hidden, None)

    def block_classes(self) -> set[type[nn.Module]]:
        """Transformer block classes (FSDP wrap units)."""
        return {type(self.model.encoder.layers[0])}


def _skipped_weights(num_layers: int, depth: int) -> list[str]:
    """Patterns of the checkpoint weights dc leaves out on purpose: the hub repos' text tower and projections
    (CLIP's `logit_scale`, SigLIP's `logit_bias`), SigLIP's pooling head, and the blocks deeper than the deepest
    tap. Any other weight the tower lacks is still reported by transformers.
    """
    patterns = [
        r"(^|\.)text_model\.",
        r"(^|\.)(text|visual)_projection\.",
        r"(^|\.)logit_(scale|bias)$",
        r"(^|\.)head\.",
    ]
    if depth < num_layers:
        patterns.append(rf"(^|\.)encoder\.layers\.({'|'.join(map(str, range(depth, num_layers)))})\.")
    return patterns


def _ignoring(model_cls: type, patterns: list[str]) -> type:
    """`model_cls` whose loading does not report `patterns` as unexpected weights (transformers' per-class list)."""
    known = list(getattr(model_cls, "_keys_to_ignore_on_load_unexpected", None) or [])
    # the same name and module: transformers takes a class defined outside its package for custom code and would
    # skip the checkpoint key mapping of its own classes (`vision_model.` prefixes)
    attrs = {"_keys_to_ignore_on_load_unexpected": known + patterns, "__module__": model_cls.__module__}
    return type(model_cls.__name__, (model_cls,), attrs)
