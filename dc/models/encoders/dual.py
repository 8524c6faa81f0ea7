"""Mini-Gemini's dual vision tower: a low-resolution HF CLIP (taps, as every encoder) plus a high-resolution
ConvNeXt (the aux map the connector mines), both fed from one high-resolution view.

What MGM (dvlab-research/MGM) feeds its two towers, and what this encoder reproduces:

* the data layer produces one view per image at `layout.input_size` (MGM: the CLIP processor at 768 px, padded to
  a square with the mean colour in stage 2 and evaluation);
* the CLIP view is `F.interpolate(view, (image_size, image_size), mode="bilinear", align_corners=False)` of that
  normalized tensor, in float32 (MGM does it in its dataset, not with a second processor pass): 768 → 336;
* the ConvNeXt sees the view itself and returns [B, C_aux, input_size / stride, …] (`ConvNeXtEncoder`).

`forward` returns the CLIP taps followed by the aux map (one more item), which a connector built with the encoder
config's `mgm` node consumes (`Connector.fuse_features`). Both towers are frozen together (`freeze`); FSDP wraps
both towers' blocks (`block_classes`). `check_mgm_pair` (called by the builder) checks the declared `encoder.mgm`
against the built aux tower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dc.models.encoders.base import EncoderLayout, Tap
from dc.models.encoders.convnext import ConvNeXtEncoder
from dc.models.encoders.hf_vision import HFVisionEncoder
from dc.utils.errors import ConfigError

if TYPE_CHECKING:  # the check below reads a built connector; encoders do not depend on connectors otherwise
    from dc.models.connectors.base import Connector

_OWNED_AUX_KEYS = ("image_size", "dtype", "freeze")
"""ConvNeXt arguments the dual encoder sets itself (from the layout and its own arguments)."""


class DualEncoder(HFVisionEncoder):
    """An HF CLIP tower on the interpolated low-res view plus a ConvNeXt aux tower on the high-res view.

    Args:
        layout: the CLIP tower's layout; `layout.input_size` is the high-res side the views arrive at (MGM: 768).
        taps: the features the connector asks for (from the CLIP tower).
        family: the low-res tower's family ("clip"; see `HFVisionEncoder`).
        pretrained: CLIP hub id or local directory; None builds random weights from `config`.
        config: CLIP config values (random init) or overrides.
        dtype: parameter dtype of both towers.
        attn_implementation: the CLIP tower's attention.
        freeze: both towers frozen (MGM freezes both).
        micro_batch: images per pass through the CLIP blocks (the aux tower has its own `aux.micro_batch`).
        compile: compile the CLIP blocks for training (see `VisionEncoder`); the ConvNeXt runs eagerly.
        aux: `ConvNeXtEncoder` keyword arguments except image_size, dtype and freeze (set from the layout and the
            arguments above). `aux.pretrained` must agree with `pretrained` (both set or both unset): a checkpoint
            keeps the encoder weights exactly when `encoder.model.pretrained` is unset.
    """

    def __init__(
        self,
        layout: EncoderLayout,
        taps: Sequence[Tap],
        *,
        family: str = "clip",
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        freeze: bool = True,
        micro_batch: int | None = None,
        compile: bool | Mapping[str, Any] = False,  # noqa: A002 - the config key's name
        aux: Mapping[str, Any],
    ) -> None:
        aux_kwargs = dict(aux or {})
        owned = sorted(set(aux_kwargs) & set(_OWNED_AUX_KEYS))
        if owned:
            raise ConfigError(
                f"encoder.model.aux.{owned[0]} is set by the dual encoder (image_size = encoder.layout.input_size, "
                f"dtype and freeze = encoder.model.dtype / freeze); remove it"
            )
        if bool(pretrained) != bool(aux_kwargs.get("pretrained", False)):
            raise ConfigError(
                f"encoder.model.pretrained={pretrained!r} but encoder.model.aux.pretrained="
                f"{aux_kwargs.get('pretrained', False)!r}: both towers must be pretrained, or both random (a "
                f"checkpoint keeps the encoder weights only when encoder.model.pretrained is unset)"
            )
        if layout.input_size < layout.image_size:
            raise ConfigError(
                f"encoder.layout.input_size={layout.input_size} is smaller than the CLIP side "
                f"encoder.layout.image_size={layout.image_size}; the aux tower takes the high-resolution view"
            )
        super().__init__(
            layout,
            taps,
            family=family,
            pretrained=pretrained,
            config=config,
            dtype=dtype,
            attn_implementation=attn_implementation,
            freeze=freeze,
            micro_batch=micro_batch,
            compile=compile,
        )
        self.aux = ConvNeXtEncoder(image_size=int(layout.input_size), dtype=dtype, freeze=freeze, **aux_kwargs)

    @property
    def aux_width(self) -> int:
        """C_aux, channels of the aux map."""
        return self.aux.hidden_size

    def block_classes(self) -> set[type[nn.Module]]:
        """Both towers' block classes (FSDP wrap units): CLIP encoder layers and ConvNeXt blocks."""
        return super().block_classes() | self.aux.block_classes()

    def train(self, mode: bool = True) -> DualEncoder:
        """The CLIP tower as `VisionEncoder.train`; the aux tower by its own rule (stochastic depth, see
        `ConvNeXtEncoder.train`).
        """
        super().train(mode)
        if "aux" in self._modules:  # the CLIP tower's __init__ already calls eval(), before the aux tower exists
            self.aux.train(mode)
        return self

    def low_res(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The CLIP view: [B, 3, input_size, input_size] → [B, 3, image_size, image_size] (MGM's interpolation,
        bilinear, align_corners=False, no antialias, float32).
        """
        size = self.layout.image_size
        if pixel_values.shape[-1] == size:
            return pixel_values
        return F.interpolate(pixel_values.float(), size=(size, size), mode="bilinear", align_corners=False)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """High-res views [B, 3, S, S] (S = `layout.input_size`) → the CLIP taps ([B, N, D] each) then the aux map
        [B, C_aux, S / stride, S / stride].
        """
        side = self.layout.input_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, side, side):
            raise ValueError(
                f"encoder '{self.layout.name}' takes views [B, 3, {side}, {side}] (encoder.layout.input_size; the "
                f"image processor must produce them), got {tuple(pixel_values.shape)}"
            )
        taps = super().forward(self.low_res(pixel_values))
        return [*taps, self.aux(pixel_values)]


def check_mgm_pair(encoder: nn.Module, connector: Connector) -> None:
    """Raise unless the encoder and the connector agree on Mini-Gemini (both or neither; same aux map layout).

    Args:
        encoder: the built encoder.
        connector: the built connector (its `mgm` comes from the encoder config's `mgm` node).
    """
    dual = isinstance(encoder, DualEncoder)
    name = connector.layout.name
    if dual and connector.mgm is None:
        raise ValueError(
            f"encoder '{name}' is a dual tower (DualEncoder) but its config has no `mgm` node: nothing would use its "
            f"aux map; add encoder.mgm {{aux_width, aux_stride, mode}}"
        )
    if not dual:
        if connector.mgm is not None:
            raise ValueError(
                f"encoder '{name}' declares `mgm` but its model ({type(encoder).__name__}) has no aux tower; "
                f"use dc.models.encoders.dual.DualEncoder"
            )
        return
    spec = connector.mgm
    if encoder.aux_width != spec.aux_width:
        raise ConfigError(
            f"encoder.mgm.aux_width={spec.aux_width} but the aux tower ({encoder.aux.model_name}, stages "
            f"{list(encoder.aux.stage_ids)}) has {encoder.aux_width} channels"
        )
    declared = spec.aux_grid(connector.layout)
    built = encoder.aux.feature_size()
    if declared != built:
        raise ConfigError(
            f"encoder.mgm.aux_stride={spec.aux_stride} gives a {declared[0]}x{declared[1]} aux map at "
            f"{connector.layout.input_size} px, but the aux tower's finest stage gives {built[0]}x{built[1]}"
        )
