"""The language-model contract: what the VLM, training, evaluation and export need from an LLM."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from dc.models.llms.templates import ChatTemplate


class LanguageModel(nn.Module, ABC):
    """An LLM with its tokenizer and chat template.

    Attributes:
        tokenizer: the LLM's tokenizer (pad token set).
        template: the chat template the LLM was tuned with (`llm.template`).
        model: the underlying Hugging Face causal LM (a peft model once LoRA is applied).
    """

    tokenizer: PreTrainedTokenizerBase
    template: ChatTemplate
    model: nn.Module

    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """d_llm, the width of the input embeddings."""

    @property
    @abstractmethod
    def max_positions(self) -> int | None:
        """The longest sequence the model accepts (None: no limit known)."""

    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, S, d_llm]."""

    @abstractmethod
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        layout: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Model outputs for input embeddings (`.loss`: mean cross-entropy over supervised tokens when `labels`).

        `layout` (a `dc.models.llms.layout.TokenLayout`, training only) replaces `labels`: the loss positions and
        the padded/packed layout come precomputed from the host.
        """

    @abstractmethod
    def generate(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        stop_token_ids: list[int],
        **settings: Any,
    ) -> torch.Tensor:
        """New token ids [B, ≤ max_new_tokens] for a left-padded batch of input embeddings."""

    def layout_mode(self) -> str | None:
        """Which `TokenLayout` the training forward takes: "packed", "padded", or None (plain `labels` only)."""
        return None

    @abstractmethod
    def decoder_layer_classes(self) -> set[type[nn.Module]]:
        """Decoder block classes (FSDP wrap and activation-checkpointing units)."""
