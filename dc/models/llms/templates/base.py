"""The chat-template contract: a conversation → (text, supervised) segments → token ids and label masks.

A conversation is a list of LLaVA turns `{"from": "human"|"gpt", "value": str}`. `encode` turns it into
`input_ids` (with `IMAGE_TOKEN_INDEX` where `<image>` stood) and `labels` in which only assistant replies and
their end token are supervised; the generation prompt is built with the same segments, so training and inference
see the same ids. Segments are tokenised piece by piece (`tokenization`), never by length arithmetic.

BOS: each template decides (`bos`): Vicuna/plain always prepend the tokenizer's BOS, Llama-3 writes
`<|begin_of_text|>` literally (its tokenizer would add a second one), Phi-2 has none, ChatML follows the tokenizer's
own setting. BOS is never emitted twice.

A template is chosen by config (`configs/llm/template/<name>.yaml`, `_target_` its class): a new template is its
module plus its YAML.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

from transformers import PreTrainedTokenizerBase

from dc.constants import IGNORE_INDEX
from dc.models.llms.templates.conversation import HUMAN, normalize_image_placeholder, validate_conversation
from dc.models.llms.templates.tokenization import encode_pieces, tokenizer_adds_bos, tokenizer_facts


@dataclass
class Encoded:
    """Token ids and labels of one sample (visual tokens not yet expanded)."""

    input_ids: list[int]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"{len(self.input_ids)} input ids but {len(self.labels)} labels")


class ChatTemplate(ABC):
    """Base class: subclasses give the segments of a conversation as (text, supervised) pairs.

    Subclasses set `name` (the registry key), `bos` (the BOS policy) and implement `segments`, which gets a
    validated conversation whose last turn may be a human turn: then the segments must end with the assistant
    header, which makes them the generation prompt (so `prompt` and `encode` share one definition).

    Attributes:
        name: registry key (`llm.template`).
        bos: "always" (prepend the tokenizer's BOS if it has a dedicated one, i.e. not its EOS), "never" (none,
            or written literally in the first segment) or "tokenizer" (prepend it iff the tokenizer would on
            its own).
        special_tokens: literals the template writes that must be single tokens of the tokenizer.
    """

    name: ClassVar[str] = "base"
    bos: ClassVar[Literal["always", "never", "tokenizer"]] = "always"
    special_tokens: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def segments(self, conversations: list[dict], tokenizer: PreTrainedTokenizerBase) -> list[tuple[str, bool]]:
        """(text, supervised) pieces of a validated conversation, in order."""

    def prompt_segments(self, user_text: str, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """Segments of a one-turn prompt ending where the assistant's reply begins."""
        turns = normalize_image_placeholder([{"from": HUMAN, "value": user_text}])
        return [text for text, _ in self.segments(turns, tokenizer)]

    def stop_strings(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """Tokens that end an assistant reply (generation stops on any of them)."""
        return [tokenizer.eos_token]

    def add_bos(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """The BOS ids to put before the first segment, following the template's `bos` policy."""
        bos = tokenizer.bos_token_id
        if bos is None or self.bos == "never":
            return []
        if self.bos == "tokenizer" and not tokenizer_adds_bos(tokenizer):
            return []
        # GPT-2-style tokenizers (Phi-2) name their EOS as BOS too; it is not a sequence start, and LLaVA-style
        # code that calls `tokenizer(...)` never gets it there.
        if self.bos == "always" and bos == tokenizer.eos_token_id:
            return []
        return [bos]

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Raise if a literal the template writes is not a single token of `tokenizer`.

        Without this a wrong tokenizer (say Llama-2 with `llama_3`) silently tokenises `<|eot_id|>` as text.
        """
        facts = tokenizer_facts(tokenizer)
        for token in self.special_tokens:
            if token in facts.checked_tokens:
                continue
            ids = list(tokenizer.encode(token, add_special_tokens=False))
            if len(ids) != 1 or (ids[0] == tokenizer.unk_token_id and token != tokenizer.unk_token):
                raise ValueError(
                    f"template {self.name!r} needs {token!r} as one token, but {type(tokenizer).__name__} "
                    f"encodes it as {ids}: wrong tokenizer for this template?"
                )
            facts.checked_tokens.add(token)

    def _tokenize(self, pieces: list[tuple[str, bool]], tokenizer: PreTrainedTokenizerBase) -> Encoded:
        """Ids and labels of (text, supervised) pieces, BOS included (once)."""
        self.check_tokenizer(tokenizer)
        ids, labels = encode_pieces(pieces, tokenizer)
        bos = self.add_bos(tokenizer)
        if bos and ids[: len(bos)] != bos:  # the first segment may already hold it literally
            ids = bos + ids
            labels = [IGNORE_INDEX] * len(bos) + labels
        return Encoded(ids, labels)

    def encode(self, conversations: list[dict], tokenizer: PreTrainedTokenizerBase) -> Encoded:
        """Token ids and labels of a whole conversation.

        Args:
            conversations: LLaVA turns, starting with the human and ending with an assistant reply.
            tokenizer: the LLM's tokenizer.

        Returns:
            `Encoded` with one `IMAGE_TOKEN_INDEX` per `<image>`; labels supervise only assistant replies and
            their end tokens.

        Raises:
            ValueError: a malformed conversation (the message names the turn) or a tokenizer that lacks the
                template's special tokens.
        """
        turns = normalize_image_placeholder(validate_conversation(conversations))
        return self._tokenize(self.segments(turns, tokenizer), tokenizer)

    def render(self, conversations: list[dict], tokenizer: PreTrainedTokenizerBase) -> str:
        """The text that `encode` tokenises (BOS included as text), for logging and debugging."""
        turns = normalize_image_placeholder(validate_conversation(conversations))
        bos = tokenizer.bos_token if self.add_bos(tokenizer) else ""
        text = "".join(t for t, _ in self.segments(turns, tokenizer))
        return text if text.startswith(bos) else bos + text

    def prompt(self, user_text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Token ids of a generation prompt for one user message (`<image>` moved to the front as in training)."""
        pieces = [(text, False) for text in self.prompt_segments(user_text, tokenizer)]
        return self._tokenize(pieces, tokenizer).input_ids

    def prompt_conversation(self, conversations: list[dict], tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Token ids of the generation prompt for a whole conversation that ends with a human turn (a chat).

        The ids are exactly those `encode` gives the same turns followed by an assistant reply, up to where that
        reply starts: the earlier replies are in the prompt as the model was trained to see them. A one-turn
        conversation gives `prompt(text)`.

        Args:
            conversations: LLaVA turns alternating human/gpt, the last one from the human.
            tokenizer: the LLM's tokenizer.

        Raises:
            ValueError: a malformed conversation, or one that ends with an assistant reply (the message names the
                turn).
        """
        turns = validate_conversation(conversations, require_reply=False)
        if turns[-1]["from"] != HUMAN:
            raise ValueError(
                f"conversation turn {len(conversations) - 1} is an assistant reply: a generation prompt ends with "
                "a human turn"
            )
        if len(turns) == 1:
            return self.prompt(turns[0]["value"], tokenizer)
        pieces = [(text, False) for text, _ in self.segments(normalize_image_placeholder(turns), tokenizer)]
        return self._tokenize(pieces, tokenizer).input_ids

    def stop_token_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Ids of `stop_strings`, without duplicates; raises if one is not a token of `tokenizer`."""
        ids: list[int] = []
        for token in self.stop_strings(tokenizer):
            if token is None:
                continue
            tid = tokenizer.convert_tokens_to_ids(token)
            if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
                raise ValueError(f"template {self.name!r}: stop token {token!r} is not in the tokenizer")
            if tid not in ids:
                ids.append(tid)
        return ids
