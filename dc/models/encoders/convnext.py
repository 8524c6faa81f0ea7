"""A frozen timm ConvNeXt as Mini-Gemini's high-resolution ("aux") tower: pixels → one multi-stage feature map.

What Mini-Gemini (dvlab-research/MGM, `multimodal_encoder/openclip_encoder.py`) does with its ConvNeXt-L:

* The tower is open_clip's `convnext_large_d_320` (LAION-2B CLIP, `...laion2B-s29B-b131K-ft-soup`) whose
  image trunk is timm's `convnext_large` (stem: Conv 4x4/4 + LayerNorm2d; stages of depths 3/3/27/3 and widths
  192/384/768/1536, strides 4/8/16/32). Only the stem and the four stages are used: no `norm_pre`, no head.
  timm publishes the same weights as `convnext_large_mlp.clip_laion2b_ft_soup_320` (the tag matters: the
  untagged default is an ImageNet-fine-tuned variant).
* Every stage's output is bilinearly resized (`align_corners=False`, computed in float32, cast back) to the
  resolution of stage 0 (stride 4) and the four maps are concatenated along channels in stage order:
  768 px → [B, 192 + 384 + 768 + 1536 = 2880, 192, 192].
* Frozen (`requires_grad_(False)`, run under `no_grad`). open_clip builds the trunk with
  `drop_path_rate=0.1` and MGM keeps it unless `--drop_path False` (its `*_nodp.sh` scripts); since the
  trainer puts the whole model in train mode, MGM's default scripts apply stochastic depth to the frozen tower
  during training. `drop_path_rate` reproduces that; 0.0 (the default here) is the deterministic `nodp` variant.
* Preprocessing: the OpenAI CLIP mean/std (MGM asserts its CLIP processor's equal open_clip's).

This wrapper builds the same trunk through `timm.create_model`, keeps only the stem and the stages up to the
deepest one requested, and returns the concatenated map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

MGM_CONVNEXT = "convnext_large_mlp.clip_laion2b_ft_soup_320"
"""timm name (with pretrained tag) of the ConvNeXt-L Mini-Gemini uses."""


class ConvNeXtEncoder(nn.Module):
    """Pixels [B, 3, S, S] → multi-stage feature map [B, C_aux, S / r, S / r] (r = stride of the finest stage).

    Args:
        model_name: timm model name, optionally with a pretrained tag (`name.tag`); MGM's is `MGM_CONVNEXT`.
        pretrained: load timm's pretrained weights (hub, or `pretrained_file`). False builds random weights
            (offline), with `dims` / `depths` overriding the architecture's when given.
        pretrained_file: a local weights file for `pretrained=True` (timm's `pretrained_cfg_overlay.file`).
        image_size: input side in pixels (MGM: 768); must be divisible by the stride of the deepest stage.
        stages: the stages whose outputs are resized and concatenated, in order (MGM: all four, 0..3).
        dims: stage widths for `pretrained=False` (e.g. tiny (8, 16, 32, 64)); None keeps the model's.
        depths: blocks per stage for `pretrained=False`; None keeps the model's.
        drop_path_rate: timm's stochastic depth; with a frozen tower it is active only while the module is in
            train mode (MGM's default scripts: 0.1; `nodp` scripts: 0.0).
        model_kwargs: extra `timm.create_model` keyword arguments.
        dtype: parameter dtype name ("float32", "bfloat16", ...).
        freeze: no gradients and `no_grad` forward.
        micro_batch: images per pass through the tower when frozen (None: the whole batch); same output,
            lower peak (the 768 px stage-0 activations dominate).
    """

    def __init__(
        self,
        *,
        model_name: str = MGM_CONVNEXT,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        image_size: int = 768,
        stages: Sequence[int] = (0, 1, 2, 3),
        dims: Sequence[int] | None = None,
        depths: Sequence[int] | None = None,
        drop_path_rate: float = 0.0,
        model_kwargs: dict[str, Any] | None = None,
        dtype: str = "float32",
        freeze: bool = True,
        micro_batch: int | None = None,
    ) -> None:
        super().__init__()
        self.stage_ids = _check_stages(stages)
        if micro_batch is not None and (type(micro_batch) is not int or micro_batch < 1):
            raise ValueError(f"encoder_aux.micro_batch={micro_batch!r} must be a positive integer or null")
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise ValueError(f"encoder_aux.drop_path_rate={drop_path_rate!r} must be in [0, 1)")
        kwargs = dict(model_kwargs or {})
        kwargs.update(num_classes=0, drop_path_rate=float(drop_path_rate))
        if pretrained:
            if dims is not None or depths is not None:
                raise ValueError("encoder_aux.dims / encoder_aux.depths apply only with encoder_aux.pretrained=false")
            if pretrained_file:
                kwargs["pretrained_cfg_overlay"] = {"file": pretrained_file}
        else:
            if dims is not None:
                kwargs["dims"] = tuple(int(d) for d in dims)
            if depths is not None:
                kwargs["depths"] = tuple(int(d) for d in depths)
            kwargs.setdefault("head_hidden_size", None)  # the head is dropped; do not build the 1536-wide MLP
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
        info = model.feature_info
        if len(info) != len(model.stages) or max(self.stage_ids) >= len(model.stages):
            raise ValueError(
                f"encoder_aux.stages={list(self.stage_ids)} out of range for '{model_name}' "
                f"({len(model.stages)} stages)"
            )
        self.stage_channels = tuple(int(info[i]["num_chs"]) for i in self.stage_ids)
        self.stage_reductions = tuple(int(info[i]["reduction"]) for i in self.stage_ids)
        deepest = max(self.stage_ids)
        if image_size % int(info[deepest]["reduction"]):
            raise ValueError(
                f"encoder_aux.image_size={image_size} must be divisible by {info[deepest]['reduction']}, "
                f"the stride of stage {deepest} of '{model_name}'"
            )
        # Only the stem and the stages up to the deepest requested one are ever run (MGM: stem + all stages).
        self.stem = model.stem
        self.stages = nn.Sequential(*list(model.stages)[: deepest + 1])
        self.built_reductions = tuple(int(info[i]["reduction"]) for i in range(deepest + 1))
        """Stride of every built stage's output (ConvNeXt: 4, 8, 16, 32)."""
        self.to(getattr(torch, dtype))
        cfg = model.pretrained_cfg
        self.image_mean = tuple(cfg.get("mean", ()))
        self.image_std = tuple(cfg.get("std", ()))
        self.model_name = model_name
        self.image_size = int(image_size)
        self.freeze = freeze
        self.drop_path_rate = float(drop_path_rate)
        self.micro_batch = micro_batch
        if freeze:
            self.requires_grad_(False)
        self.train(False)

    # --- layout ---------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        """C_aux, channels of the output map (MGM ConvNeXt-L: 2880)."""
        return sum(self.stage_channels)

    def feature_size(self, image_size: int | None = None) -> tuple[int, int]:
        """(h, w) of the output map for a square input (MGM: 768 → (192, 192))."""
        side = (image_size or self.image_size) // min(self.stage_reductions)
        return side, side

    def param_positions(self, image_size: int | None = None) -> int:
        """Σ parameters × output positions they run over, per image (the stem at its output resolution, each
        stage, downsampling included, at its own): a convolution's multiply-adds per output position equal its
        weight count, so forward FLOPs ≈ 2 × this (norms and biases counted like weights, as `2·N` per token
        counts them for transformers).
        """
        side = int(image_size or self.image_size)
        stem_stride = math.prod(int(m.stride[0]) for m in self.stem.modules() if isinstance(m, nn.Conv2d))
        total = _numel(self.stem) * (side // stem_stride) ** 2
        for stage, reduction in zip(self.stages, self.built_reductions, strict=True):
            total += _numel(stage) * (side // reduction) ** 2
        return total

    def block_classes(self) -> set[type[nn.Module]]:
        """ConvNeXt block classes (FSDP wrap units; stage 2 of ConvNeXt-L alone has 27)."""
        return {type(b) for stage in self.stages for b in stage.blocks}

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def train(self, mode: bool = True) -> ConvNeXtEncoder:
        """A frozen tower stays in eval mode, unless stochastic depth is on (ConvNeXt has no BN or dropout,
        so train mode only switches on DropPath, as in MGM's default scripts).
        """
        return super().train(mode and (not self.freeze or self.drop_path_rate > 0))

    # --- forward --------------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalized pixels → [B, hidden_size, S / r, S / r] in the tower dtype."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"encoder_aux expects pixels [B, 3, H, W], got {tuple(pixel_values.shape)}")
        grad = torch.is_grad_enabled() and not self.freeze
        with torch.set_grad_enabled(grad):
            pixel_values = pixel_values.to(self.dtype)
            batch, step = pixel_values.shape[0], self.micro_batch
            if step is None or batch <= step or grad:
                return self._forward(pixel_values)
            out: torch.Tensor | None = None
            for i in range(0, batch, step):  # frozen: fill one preallocated map, one chunk alive at a time
                part = self._forward(pixel_values[i : i + step])
                if out is None:
                    out = part.new_empty((batch, *part.shape[1:]))
                out[i : i + step] = part
            assert out is not None
            return out

    def _forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixel_values)
        maps: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.stage_ids:
                maps[i] = x
        size = tuple(maps[min(self.stage_ids)].shape[-2:])  # the finest (lowest-stride) requested stage
        parts = []
        for i in self.stage_ids:
            m = maps.pop(i)
            if tuple(m.shape[-2:]) != size:
                # As MGM: bilinear, align_corners=False, in float32, back to the stage's dtype.
                m = F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False).to(m.dtype)
            parts.append(m)
        return torch.cat(parts, dim=1)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_stages(stages: Sequence[int]) -> tuple[int, ...]:
    ids = tuple(int(s) for s in stages)
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise ValueError(f"encoder_aux.stages={list(stages)!r} must be distinct non-negative stage indices")
    return ids
