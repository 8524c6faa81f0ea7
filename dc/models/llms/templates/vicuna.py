"""Vicuna v1 (LLaVA-1.5's `v1`) and Phi-2's Vicuna-style layout."""

from __future__ import annotations

from typing import ClassVar

from transformers import PreTrainedTokenizerBase

from dc.models.llms.templates.base import ChatTemplate
from dc.models.llms.templates.conversation import HUMAN

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
"""System prompt of Vicuna v1 (and of the Phi-2 template)."""


class VicunaV1(ChatTemplate):
    """Vicuna v1 (LLaVA `SeparatorStyle.TWO`, sep " ", sep2 EOS).

    `{system} USER: {msg} ASSISTANT: {reply}</s>USER: {msg2} ASSISTANT: {reply2}</s>`: note there is no space
    after `</s>`, exactly as in LLaVA's `Conversation.get_prompt`. Supervised: " {reply}" and its EOS.
    """

    name = "vicuna_v1"
    system: ClassVar[str] = VICUNA_SYSTEM
    bos = "always"

    def end_token(self, tokenizer: PreTrainedTokenizerBase) -> str:
        """The token that ends an assistant turn (sep2)."""
        if tokenizer.eos_token is None:
            raise ValueError(f"template {self.name!r} needs a tokenizer with an EOS token")
        return tokenizer.eos_token

    def segments(self, conversations: list[dict], tokenizer: PreTrainedTokenizerBase) -> list[tuple[str, bool]]:
        end = self.end_token(tokenizer)
        out: list[tuple[str, bool]] = [(self.system, False)]
        for k, turn in enumerate(conversations):
            if turn["from"] == HUMAN:
                sep = " " if k == 0 else ""  # after the system prompt sep=" "; after a reply sep2 already ended it
                out.append((f"{sep}USER: {turn['value']} ASSISTANT:", False))
            else:
                out.append((" " + turn["value"], True))
                out.append((end, True))
        return out


class Phi2(VicunaV1):
    """Phi-2: the Vicuna v1 layout with turns ended by `<|endoftext|>` and no BOS (TinyLLaVA's `phi`)."""

    name = "phi2"
    bos = "never"
    special_tokens = ("<|endoftext|>",)

    def end_token(self, tokenizer: PreTrainedTokenizerBase) -> str:
        return "<|endoftext|>"

    def stop_strings(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        return ["<|endoftext|>", tokenizer.eos_token]
