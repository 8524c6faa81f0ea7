"""ChatML (Nous-Hermes-2-Yi-34B)."""

from __future__ import annotations

from typing import ClassVar

from transformers import PreTrainedTokenizerBase

from dc.models.llms.templates.base import ChatTemplate
from dc.models.llms.templates.conversation import HUMAN

CHATML_SYSTEM = "Answer the questions."
"""System prompt of LLaVA's `chatml_direct` conversation, the one used with Nous-Hermes-2-Yi-34B."""


class ChatML(ChatTemplate):
    """ChatML (Nous-Hermes-2-Yi-34B).

    `<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{msg}<|im_end|>\\n<|im_start|>assistant\\n
    {reply}<|im_end|>\\n`. Supervised: `{reply}<|im_end|>`. BOS only if the tokenizer adds one itself (Yi's does
    not). The system prompt is LLaVA `chatml_direct`'s; unlike that conversation (which joins messages with no
    newline) this writes standard ChatML with `\\n` after each `<|im_end|>`, the format Hermes-2 was tuned on.
    """

    name = "chatml"
    system: ClassVar[str] = CHATML_SYSTEM
    bos = "tokenizer"
    special_tokens = ("<|im_start|>", "<|im_end|>")

    def segments(self, conversations: list[dict], tokenizer: PreTrainedTokenizerBase) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = [(f"<|im_start|>system\n{self.system}<|im_end|>\n", False)]
        for turn in conversations:
            if turn["from"] == HUMAN:
                out.append((f"<|im_start|>user\n{turn['value']}<|im_end|>\n<|im_start|>assistant\n", False))
            else:
                out.append((f"{turn['value']}<|im_end|>", True))
                out.append(("\n", False))
        return out

    def stop_strings(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        return ["<|im_end|>", tokenizer.eos_token]
