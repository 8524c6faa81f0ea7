"""The VLM: vision encoder → connector → visual tokens spliced into the LLM's input embeddings.

The collate has already expanded every `<image>` into as many `IMAGE_TOKEN_INDEX` ids as the connector emits
for that image, so splicing is one masked scatter: the i-th visual token of the batch (images in order, each
image's tokens in order) goes to the i-th `IMAGE_TOKEN_INDEX` position in row-major order. A sample may hold
any number of images (video frames, crops), each with its own token count.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dc.constants import IMAGE_TOKEN_INDEX
from dc.models.connectors.base import Connector
from dc.models.encoders.base import VisionEncoder
from dc.models.llms.hf_causal import LanguageModel


class VLM(nn.Module):
    """Composes a `VisionEncoder`, a `Connector` and a `LanguageModel`."""

    def __init__(self, encoder: VisionEncoder, connector: Connector, llm: LanguageModel) -> None:
        super().__init__()
        self.encoder = encoder
        self.connector = connector
        self.llm = llm

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens per image at the encoder's native resolution."""
        return self.connector.num_visual_tokens()

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images [I, 3, H, W] → visual tokens [I, T, d_llm]."""
        return self.connector(self.encoder(pixel_values))

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Text embeddings with visual tokens spliced in at `IMAGE_TOKEN_INDEX` positions."""
        is_visual = input_ids == IMAGE_TOKEN_INDEX
        embeds = self.llm.embed(input_ids.masked_fill(is_visual, 0))
        if pixel_values is None or pixel_values.shape[0] == 0:
            # Text-only batch: run the connector on one blank image and add 0× its output, so every trainable
            # parameter stays in the graph (a distributed run would otherwise wait for gradients forever).
            size = self.encoder.layout.image_size
            blank = torch.zeros(1, 3, size, size, device=embeds.device)
            return embeds + 0.0 * self.encode_images(blank).sum().to(embeds.dtype)
        visual = self.encode_images(pixel_values)
        n_slots = int(is_visual.sum())
        if n_slots != visual.shape[0] * visual.shape[1]:
            raise ValueError(
                f"the batch has {n_slots} visual-token slots but {visual.shape[0]} images × {visual.shape[1]} "
                f"tokens = {visual.shape[0] * visual.shape[1]} visual tokens"
            )
        return embeds.masked_scatter(is_visual.unsqueeze(-1), visual.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """LLM outputs (with the mean cross-entropy over supervised tokens as `.loss` when labels are given)."""
        embeds = self.embed_inputs(input_ids, pixel_values)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None,
        max_new_tokens: int,
        stop_token_ids: list[int],
        **generation: Any,
    ) -> torch.Tensor:
        """Decode a left-padded batch (greedy with the KV cache unless `generation` says otherwise).

        Returns only the new tokens.
        """
        embeds = self.embed_inputs(input_ids, pixel_values)
        settings = {"do_sample": False, "num_beams": 1, "use_cache": True, **generation}
        return self.llm.model.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop_token_ids,
            pad_token_id=self.llm.tokenizer.pad_token_id,
            **settings,
        )
