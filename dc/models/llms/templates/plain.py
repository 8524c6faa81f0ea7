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
