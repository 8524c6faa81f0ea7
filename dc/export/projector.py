"""Connector → the `vision_feature_layer` and `multi_modal_projector` of a stock `LlavaForConditionalGeneration`.

Stock Llava concatenates `hidden_states[i]` for each listed index along channels (dropping the CLS token from each
when `vision_feature_select_strategy="default"`) and applies Linear → GELU → Linear. dc's MLP, SCI and DCI
connectors all fuse *linear combinations of hidden states* along channels, so each is one stock model:

* MLP: `vision_feature_layer = final` (an int), projector unchanged.
* SCI: `[final, *layers]` in dc's concatenation order, projector unchanged (bit-identical weights).
* DCI: every index any tap uses, ascending, and an expanded first Linear. A DCI tap is the mean of its group, and
  `W_k · mean_{i∈g_k} h_i = Σ_{i∈g_k} (W_k / |g_k|) h_i`, so the block of the expanded weight that multiplies
  `h_i` is `Σ_k [i ∈ tap k] · W_k / |tap k|` (CLIP's index 23 is both the final feature and a member of the upper
  group and gets both terms). No shorter list is exact in general: the hidden states are distinct tensors. The
  expansion is computed in float64 and rounded once to the export dtype.

Indices are always written non-negative: the exported tower is built only as deep as the deepest index (as
dc's encoder is), so a negative index would count from a different end than in the full tower.

Everything else is refused with the reason (`export_blockers`): STI pools tokens, the Efficient DC downsamples the
patch grid, a `linear` projector has no GELU, and towers with more than one prefix token are not what the
"default" strategy drops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dc.export.errors import ExportError
from dc.models.connectors import (
    DenseChannelIntegration,
    MLPConnector,
    SparseChannelIntegration,
    SparseTokenIntegration,
)
from dc.models.connectors.base import Connector
from dc.models.encoders.base import EncoderLayout, Tap

CHANNEL_CONNECTORS = (MLPConnector, SparseChannelIntegration, DenseChannelIntegration)


@dataclass(frozen=True)
class ProjectorExport:
    """What stock Llava needs from a connector.

    Attributes:
        vision_feature_layer: one index (MLP) or the list of indices whose states are concatenated.
        select_strategy: "default" (the tower has one CLS token, dropped) or "full" (no prefix token).
        image_seq_length: visual tokens per image.
        state: `linear_1.{weight,bias}`, `linear_2.{weight,bias}` of `multi_modal_projector`.
    """

    vision_feature_layer: int | list[int]
    select_strategy: str
    image_seq_length: int
    state: dict[str, torch.Tensor]

    @property
    def indices(self) -> list[int]:
        """`vision_feature_layer` as a list."""
        layer = self.vision_feature_layer
        return [layer] if isinstance(layer, int) else list(layer)


def select_strategy(layout: EncoderLayout) -> str:
    """Llava's `vision_feature_select_strategy`: "default" drops the one CLS token, "full" keeps every token."""
    return "default" if layout.num_prefix_tokens == 1 else "full"


def connector_blockers(connector: Connector) -> list[str]:
    """Reasons why `connector` has no exact stock-Llava form (empty when it has one)."""
    reasons: list[str] = []
    if isinstance(connector, SparseTokenIntegration):
        reasons.append(
            f"connector=sti (SparseTokenIntegration, layers {connector.layers}, pool {connector.pool}) appends "
            f"1-D average-pooled tokens along the token axis ({connector.num_visual_tokens()} visual tokens for "
            f"{connector.layout.num_patches} patches); stock LlavaForConditionalGeneration maps each patch token "
            f"to exactly one visual token, so no config or weight layout reproduces it"
        )
    elif type(connector) not in CHANNEL_CONNECTORS:
        reasons.append(
            f"connector {type(connector).__name__} is not one of the exportable connectors (mlp, sci, dci): "
            f"only fusions that concatenate hidden states along channels map onto stock Llava"
        )
    if connector.downsample is not None:
        ds = connector.downsample
        reasons.append(
            f"connector.downsample (Efficient Dense Connector: mode={ds.mode}, grid {ds.grid} -> {ds.target}, "
            f"position={ds.position}) resizes the patch grid; stock LlavaForConditionalGeneration has no token "
            f"pooling (LlavaNextVideo's 2x2 average pooling equals it only for bilinear on even grids and is not "
            f"an image model), so it is not exported"
        )
    if not _is_mlp2x_gelu(connector.projector):
        reasons.append(
            f"connector.projector is {_describe(connector.projector)}; stock Llava's projector is "
            f"Linear(bias) -> exact GELU -> Linear(bias) (connector.projector=mlp2x_gelu)"
        )
    prefix = connector.layout.num_prefix_tokens
    if prefix not in (0, 1):
        reasons.append(
            f"encoder '{connector.layout.name}' has {prefix} prefix tokens; stock Llava drops either one (CLS, "
            f"strategy 'default') or none ('full')"
        )
    return reasons


def _is_mlp2x_gelu(projector: nn.Module) -> bool:
    if not isinstance(projector, nn.Sequential) or len(projector) != 3:
        return False
    first, act, second = projector
    linears = isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
    exact_gelu = type(act) is nn.GELU and act.approximate == "none"
    return linears and exact_gelu and first.bias is not None and second.bias is not None


def _describe(projector: nn.Module) -> str:
    if isinstance(projector, nn.Sequential):
        return "Sequential(" + ", ".join(type(m).__name__ for m in projector) + ")"
    return type(projector).__name__


def expand_first_linear(weight: torch.Tensor, taps: list[Tap], width: int) -> tuple[list[int], torch.Tensor]:
    """The stock-Llava form of a Linear over `[mean(tap_0) ‖ mean(tap_1) ‖ …]`.

    Args:
        weight: [out, len(taps) · width], the connector's first Linear.
        taps: index groups in concatenation order; a tap of one index is that state.
        width: D, the encoder width (one block of columns per tap).

    Returns:
        (indices, expanded): the ascending distinct indices of all taps, and the [out, len(indices) · width]
        weight whose block for index i is `Σ_k (count of i in tap k) · W_k / |tap k|`, in float64 (the caller
        rounds it once to the export dtype).
    """
    if weight.shape[1] != len(taps) * width:
        raise ValueError(f"first Linear has {weight.shape[1]} inputs, expected {len(taps)} taps x {width}")
    indices = sorted({i for tap in taps for i in tap})
    slot = {index: n for n, index in enumerate(indices)}
    exact = weight.detach().to(torch.float64)
    out = torch.zeros(weight.shape[0], len(indices) * width, dtype=torch.float64, device=weight.device)
    for k, tap in enumerate(taps):
        block = exact[:, k * width : (k + 1) * width] / len(tap)
        for i in tap:
            s = slot[i]
            out[:, s * width : (s + 1) * width] += block
    return indices, out


def export_projector(connector: Connector, dtype: torch.dtype) -> ProjectorExport:
    """The stock-Llava projector of an exportable connector (see the module docstring).

    Raises:
        ExportError: listing every reason the connector cannot be exported exactly.
    """
    reasons = connector_blockers(connector)
    if reasons:
        raise ExportError("cannot export exactly to LlavaForConditionalGeneration:\n- " + "\n- ".join(reasons))
    first, _, second = connector.projector
    taps = [tuple(t) for t in connector.taps]
    if all(len(t) == 1 for t in taps):
        # MLP / SCI: the concatenation order is the list order; the weights are used as they are.
        indices = [t[0] for t in taps]
        weight = first.weight.detach()
        layer: int | list[int] = indices[0] if len(indices) == 1 else indices
    else:
        indices, weight = expand_first_linear(first.weight, taps, connector.layout.hidden_size)
        layer = indices
    state = {
        "linear_1.weight": weight,
        "linear_1.bias": first.bias.detach(),
        "linear_2.weight": second.weight.detach(),
        "linear_2.bias": second.bias.detach(),
    }
    state = {k: v.to(dtype=dtype, copy=True) for k, v in state.items()}
    return ProjectorExport(layer, select_strategy(connector.layout), connector.num_visual_tokens(), state)
