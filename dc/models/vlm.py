"""The VLM: vision encoder → connector → per-input merge → visual tokens spliced into the LLM's input embeddings.

A batch carries every view of every visual input as one pixel tensor [V, 3, H, W] (inputs in sample order, each
input's views in order) and one `VisualMeta` per input. The encoder and the connector run on all views at once;
each input's view tokens are then merged by its mode (plain image: as they are; AnyRes: unpad + newlines; video:
temporal aggregation) into `meta.tokens` tokens. The collate has already expanded every `<image>` into that many
`IMAGE_TOKEN_INDEX` ids, so splicing is one masked scatter: the i-th visual token of the batch goes to the i-th
`IMAGE_TOKEN_INDEX` position in row-major order. Counts are checked on the host from the metas (no device sync).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dc.constants import IMAGE_TOKEN_INDEX
from dc.models.connectors.base import Connector
from dc.models.encoders.base import VisionEncoder
from dc.models.llms.base import LanguageModel
from dc.models.visual.base import IMAGE, VIDEO, VisualMeta

VideoMerge = Callable[[torch.Tensor, VisualMeta], torch.Tensor]


class VLM(nn.Module):
    """Composes a `VisionEncoder`, a `Connector` and a `LanguageModel`.

    Attributes:
        video_merge: how a video input's frame tokens [T, N, d] become its tokens (set for inference on video;
            see `dc.models.visual.video`); None: video inputs are refused.
    """

    def __init__(self, encoder: VisionEncoder, connector: Connector, llm: LanguageModel) -> None:
        super().__init__()
        self.encoder = encoder
        self.connector = connector
        self.llm = llm
        self.video_merge: VideoMerge | None = None

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens of one plain image at the encoder's native resolution."""
        return self.connector.num_visual_tokens()

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Views [V, 3, H, W] → view tokens [V, T, d_llm] (no merging)."""
        return self.connector(self.encoder(pixel_values))

    def visual_tokens(self, pixel_values: torch.Tensor, visual: Sequence[VisualMeta]) -> torch.Tensor:
        """Every input's merged tokens, concatenated in order: [Σ meta.tokens, d_llm]."""
        n_views = sum(m.views for m in visual)
        if n_views != pixel_values.shape[0]:
            raise ValueError(f"the batch has {pixel_values.shape[0]} views but its inputs declare {n_views}")
        views = self.encode_images(pixel_values)
        d = views.shape[-1]
        if self.connector.image_merge is None and all(m.views == 1 and m.kind == IMAGE for m in visual):
            merged = views.reshape(-1, d)  # plain images: nothing to merge
        else:
            parts, start = [], 0
            for meta in visual:
                chunk = views[start : start + meta.views]
                start += meta.views
                if meta.kind == VIDEO:
                    if self.video_merge is None:
                        raise ValueError("a video input reached a VLM without video_merge (set it for video inference)")
                    parts.append(self.video_merge(chunk, meta))
                else:
                    parts.append(self.connector.merge(chunk, meta))
            merged = torch.cat(parts)
        expected = sum(m.tokens for m in visual)
        if merged.shape[0] != expected:
            raise ValueError(f"the inputs declare {expected} visual tokens but merging gave {merged.shape[0]}")
        return merged

    def _unused_visual_path(self, embeds: torch.Tensor) -> torch.Tensor:
        """0 × (connector output for a blank view + every trainable connector weight), to keep them in the graph."""
        size = self.encoder.layout.input_size  # the side of the views (a dual tower's high-res side)
        blank = torch.zeros(1, 3, size, size, device=embeds.device)
        zero = 0.0 * self.encode_images(blank).sum()
        for p in self.connector.parameters():
            if p.requires_grad:
                zero = zero + 0.0 * p.sum()
        return zero.to(embeds.dtype)

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        visual: Sequence[VisualMeta] | None = None,
        visual_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text embeddings with visual tokens spliced in at `IMAGE_TOKEN_INDEX` positions.

        Args:
            input_ids: [B, S] with one `IMAGE_TOKEN_INDEX` per visual token.
            pixel_values: [V, 3, H, W] views of every input in order, or None (text only).
            visual: one `VisualMeta` per input; None means every view is one plain image.
            visual_index: the flat [B·S] positions of those slots, computed on the host (training: from the
                batch's `TokenLayout`); the splice is then an `index_copy`, with no device sync in its backward.
        """
        is_visual = input_ids == IMAGE_TOKEN_INDEX
        embeds = self.llm.embed(input_ids.masked_fill(is_visual, 0))
        if pixel_values is None or pixel_values.shape[0] == 0:
            # Text-only batch: every trainable connector weight must still get a (zero) gradient, or a distributed
            # run would wait for it forever.
            return embeds + self._unused_visual_path(embeds) if torch.is_grad_enabled() else embeds
        if visual is None:
            n = self.num_visual_tokens
            visual = [VisualMeta(views=1, tokens=n)] * pixel_values.shape[0]
        tokens = self.visual_tokens(pixel_values, visual)
        if self.connector.image_merge is not None and torch.is_grad_enabled():
            tokens = tokens + self._unused_params_zero(visual, tokens)
        if visual_index is not None:
            flat = embeds.reshape(-1, embeds.shape[-1]).index_copy(0, visual_index, tokens.to(embeds.dtype))
            return flat.view_as(embeds)
        return embeds.masked_scatter(is_visual.unsqueeze(-1), tokens.to(embeds.dtype))

    def _unused_params_zero(self, visual: Sequence[VisualMeta], tokens: torch.Tensor) -> torch.Tensor:
        """A zero that touches the merge parameters when no input of the batch used them (e.g. only videos)."""
        if any(m.kind == IMAGE for m in visual):
            return tokens.new_zeros(())
        zero = tokens.new_zeros(())
        for p in self.connector.image_merge.parameters():
            zero = zero + 0.0 * p.sum().to(tokens.dtype)
        return zero

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        visual: Sequence[VisualMeta] | None = None,
        **kwargs: Any,
    ) -> Any:
        """LLM outputs (with the mean cross-entropy over supervised tokens as `.loss` when labels are given).

        A `layout=` keyword (training: `dc.models.llms.layout.TokenLayout`) goes to the LLM; its `visual_index`
        is used for the splice.
        """
        layout = kwargs.get("layout")
        embeds = self.embed_inputs(input_ids, pixel_values, visual, getattr(layout, "visual_index", None))
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None,
        max_new_tokens: int,
        stop_token_ids: list[int],
        visual: Sequence[VisualMeta] | None = None,
        **generation: Any,
    ) -> torch.Tensor:
        """Decode a left-padded batch (greedy with the KV cache unless `generation` says otherwise).

        Returns only the new tokens.
        """
        embeds = self.embed_inputs(input_ids, pixel_values, visual)
        return self.llm.generate(
            embeds, attention_mask, max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids, **generation
        )
