"""A timm `VisionTransformer`, run only as deep as the connector needs, indexed like Hugging Face.

Index mapping (timm → the Hugging Face `hidden_states` convention used everywhere in `dc`):

* HF index 0, the embedding output, is timm's token sequence just before the first block:
  `norm_pre(patch_drop(_pos_embed(patch_embed(x))))`, i.e. patch tokens with the class/register tokens
  prepended and the position embedding added, after `norm_pre` (CLIP's pre-LayerNorm; an identity for
  models without one). `forward_intermediates` cannot return it, which is why this wrapper runs the blocks
  itself (as `forward_intermediates` does internally) instead of calling it.
* HF index i ≥ 1 is the output of `blocks[i - 1]`, i.e. timm's `forward_intermediates(indices=[i - 1])`
  with `norm=False`. The final `norm` / `fc_norm`, the attention-pool and the classifier head are never used.
* Prefix tokens (`num_prefix_tokens`: class + register tokens) lead the sequence, as in HF CLIP; the base
  class drops them from every tap.

Running the blocks here (rather than `forward_intermediates`) also lets the base class keep running group
sums for DCI instead of a list of intermediates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from torch import nn

from dc.models.encoders.base import EncoderLayout, Tap, VisionEncoder
from dc.utils.errors import ConfigError


class TimmViTEncoder(VisionEncoder):
    """A timm ViT (e.g. `vit_large_patch14_clip_quickgelu_336.openai`).

    Args:
        layout: the full model's layout (checked against the built model).
        taps: the features the connector asks for.
        model_name: timm model name, optionally with a pretrained tag (`name.tag`).
        pretrained: load timm's pretrained weights (hub or `pretrained_file`); False builds random weights with
            the width, image size and patch size of `layout` and only the blocks the taps need (offline).
        pretrained_file: a local weights file for `pretrained=True` (timm's `pretrained_cfg_overlay.file`).
        model_kwargs: extra `timm.create_model` keyword arguments (e.g. `num_heads`, `mlp_ratio`).
        dtype: parameter dtype name.
        freeze: keep the tower frozen and run it under `no_grad`.
        micro_batch: images run through the blocks at a time (None: all); see `VisionEncoder`.
        compile: compile the blocks for training; see `VisionEncoder`.
    """

    def __init__(
        self,
        layout: EncoderLayout,
        taps: Sequence[Tap],
        *,
        model_name: str,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        dtype: str = "float32",
        freeze: bool = True,
        micro_batch: int | None = None,
        compile: bool | Mapping[str, Any] = False,  # noqa: A002 - the config key's name
    ) -> None:
        super().__init__(layout, taps, freeze, micro_batch, compile)
        kwargs = dict(model_kwargs or {})
        kwargs["num_classes"] = 0
        if pretrained:
            if pretrained_file:
                kwargs["pretrained_cfg_overlay"] = {"file": pretrained_file}
            # Pretrained checkpoints load strictly into the full model; the unused blocks are pruned after.
            model = timm.create_model(model_name, pretrained=True, **kwargs)
            self._check_layout(model, check_depth=True)
        else:
            kwargs.update(
                embed_dim=layout.hidden_size,
                img_size=layout.image_size,
                patch_size=layout.patch_size,
                depth=self.depth,  # only the blocks a tap needs are ever built
            )
            model = timm.create_model(model_name, pretrained=False, **kwargs)
            self._check_layout(model, check_depth=False)
        # Nothing after the deepest tapped block is used: drop it, the final norm and the head/attention pool.
        model.blocks = model.blocks[: self.depth]
        model.norm = nn.Identity()
        model.fc_norm = nn.Identity()
        model.reset_classifier(0, "")
        self.model = model.to(getattr(torch, dtype))
        self.model_name = model_name
        self._apply_freeze()

    def _check_layout(self, model: nn.Module, *, check_depth: bool) -> None:
        found = {
            "hidden_size": model.embed_dim,
            "image_size": model.patch_embed.img_size[0],
            "patch_size": model.patch_embed.patch_size[0],
            "num_prefix_tokens": model.num_prefix_tokens,
        }
        if check_depth:
            found["num_layers"] = len(model.blocks)
        if model.patch_embed.img_size[0] != model.patch_embed.img_size[1]:
            raise ValueError(f"encoder '{self.layout.name}': only square inputs are supported")
        for key, value in found.items():
            if getattr(self.layout, key) != value:
                raise ConfigError(
                    f"encoder.layout.{key}={getattr(self.layout, key)} does not match the timm model "
                    f"'{model.default_cfg.get('architecture', '?')}' ({value}) for encoder '{self.layout.name}'"
                )

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(pixel_values))))

    def blocks(self) -> Sequence[nn.Module]:
        return self.model.blocks

    def block_classes(self) -> set[type[nn.Module]]:
        """Transformer block classes (FSDP wrap units)."""
        return {type(b) for b in self.model.blocks}
