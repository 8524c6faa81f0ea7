"""Llama-3 Instruct, and the Dense Connector reference's variant of it."""

from __future__ import annotations

from typing import ClassVar

from transformers import PreTrainedTokenizerBase

from dc.models.llms.templates.base import ChatTemplate
from dc.models.llms.templates.conversation import HUMAN

LLAMA_3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
"""System prompt of the Dense Connector / LLaVA-Llama-3 template (as in the reference code)."""


class Llama3(ChatTemplate):
    """Llama-3 Instruct.

    `<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|>` then, per turn,
    `<|start_header_id|>user<|end_header_id|>\\n\\n{msg}<|eot_id|>` and
    `<|start_header_id|>assistant<|end_header_id|>\\n\\n{reply}<|eot_id|>`. BOS is the literal
    `<|begin_of_text|>` (the Llama-3 tokenizer's own BOS insertion would double it). Supervised: `{reply}<|eot_id|>`.
    """

    name = "llama_3"
    system: ClassVar[str] = LLAMA_3_SYSTEM
    bos = "never"
    assistant_role: ClassVar[str] = "assistant"
    special_tokens = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

    @staticmethod
    def header(role: str) -> str:
        """The role header that opens a message."""
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"

    def segments(self, conversations: list[dict], tokenizer: PreTrainedTokenizerBase) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = [(f"<|begin_of_text|>{self.header('system')}{self.system}<|eot_id|>", False)]
        for turn in conversations:
            if turn["from"] == HUMAN:
                user = f"{self.header('user')}{turn['value']}<|eot_id|>"
                out.append((user + self.header(self.assistant_role), False))
            else:
                out.append((f"{turn['value']}<|eot_id|>", True))
        return out

    def stop_strings(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        return ["<|eot_id|>", tokenizer.eos_token]


class Llama3DC(Llama3):
    """Llama-3 as the Dense Connector reference wrote it: assistant turns under the **system** header.

    HJYao00/DenseConnector's `conv_llama_3` uses `<|start_header_id|>system<|end_header_id|>\\n\\n` as the
    assistant role (as in the reference code). The released DC Llama3-8B checkpoint was trained and evaluated that
    way, so use this template to fine-tune or evaluate it; use `llama_3` for anything trained here from scratch.
    """

    name = "llama_3_dc"
    assistant_role = "system"
