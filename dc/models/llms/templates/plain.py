"""Stage 1's `plain` template: `<image>` then the caption and a newline."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from dc.constants import IMAGE_PLACEHOLDER
from dc.models.llms.templates.base import ChatTemplate


class Plain(ChatTemplate):
    """Stage-1 captioning: `<image>` then the caption and a newline; the human prompt is discarded."""

    name = "plain"

    def segments(self, conversations: list[dict], tokenizer: PreTrainedTokenizerBase) -> list[tuple[str, bool]]:
        if len(conversations) < 2:
            return [(IMAGE_PLACEHOLDER, False)]  # the generation prompt: just the image
        caption = conversations[1]["value"]
        return [(IMAGE_PLACEHOLDER, False), (caption + "\n", True)]

    def prompt_segments(self, user_text: str, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        return [IMAGE_PLACEHOLDER] if IMAGE_PLACEHOLDER in user_text else []

    def prompt_conversation(self, conversations: list[dict], tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Stage-1 captioning has no conversation: one human turn only (its text is discarded, as in training)."""
        if len(conversations) != 1:
            raise ValueError(
                f"template {self.name!r} (stage-1 captioning) takes one human turn, got {len(conversations)} turns: "
                "start a new conversation for each image"
            )
        return super().prompt_conversation(conversations, tokenizer)
