"""Chat templates as objects: prompts and label masks built by tokenising segments, never length arithmetic.

A conversation is a list of LLaVA turns `{"from": "human"|"gpt", "value": str}`. `encode` turns it into
`input_ids` (with `IMAGE_TOKEN_INDEX` where `<image>` stood) and `labels` in which only assistant replies and
their end token are supervised. Each piece is tokenised on its own without special tokens and the ids are
concatenated, so the supervised span is exactly the reply's tokens; the generation prompt is built with the
same pieces, so training and inference see the same ids.

Tokenising piece by piece must give the ids that tokenising the whole text would give, or training sees token
sequences the LLM never saw in pre-training. Two tokenizer behaviours make that non-trivial:

* **Prefix spaces.** SentencePiece-style tokenizers (Llama-2/Vicuna, Yi: a `Metaspace` pre-tokenizer or a
  `Prepend("▁")` normalizer) put a "▁" in front of every string they encode, so `"USER:"` encoded on its own
  gives `▁USER:` where the whole text, after `</s>`, has `USER:`. A piece that continues ordinary text is
  therefore encoded with a copy of the backend tokenizer whose prefix insertion is switched off; a piece that
  follows a special token is encoded behind that same token (then dropped), which reproduces whatever the
  tokenizer does after special tokens (nothing with `prepend_scheme="first"`, a "▁" with legacy `"always"`).
  A piece that *starts* a text (the first piece, and each piece after `<image>`) keeps the tokenizer's own
  behaviour: LLaVA's `tokenizer_image_token` tokenises each chunk between images as a fresh string, so this
  reproduces its ids, including the "▁" that Llama-2 puts before the `\n` after `<image>`. Net effect: for
  text-only conversations the ids equal `tokenizer(whole_text)`; tests check this for both prefix schemes.
* **BOS.** Pieces are encoded with `add_special_tokens=False` and each template decides about BOS (`add_bos`):
  Vicuna/plain always prepend the tokenizer's BOS, Llama-3 writes `<|begin_of_text|>` literally (its tokenizer
  would add a second one), Phi-2 has none, ChatML follows the tokenizer's own setting. BOS is never emitted twice.

LLaVA data conventions kept here: `<image>` is moved to the front of its turn (`normalize_image_placeholder`,
LLaVA's `preprocess_multimodal`), and a conversation that starts with a `gpt` turn has that turn dropped
(LLaVA's `preprocess_v1` does `source = source[1:]`); anything else malformed raises `ValueError` naming the turn.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from dc.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
"""System prompt of Vicuna v1 (and of the Phi-2 template)."""

LLAMA_3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
"""System prompt of the Dense Connector / LLaVA-Llama-3 template (reference-spec §3.1)."""

CHATML_SYSTEM = "Answer the questions."
"""System prompt of LLaVA's `chatml_direct` conversation, the one used with Nous-Hermes-2-Yi-34B."""

HUMAN, GPT = "human", "gpt"


@dataclass
class Encoded:
    """Token ids and labels of one sample (visual tokens not yet expanded)."""

    input_ids: list[int]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"{len(self.input_ids)} input ids but {len(self.labels)} labels")


# --------------------------------------------------------------------------------------------------------------
# Conversation checks


def normalize_image_placeholder(conversations: list[dict]) -> list[dict]:
    """Move `<image>` to the front of every turn that contains it, as LLaVA's `preprocess_multimodal` does.

    In such a turn every `<image>` is removed, the rest is stripped and the turn becomes `"<image>\\n" + rest`
    (just `"<image>"` when nothing else is left). Several placeholders in one turn collapse into one, as in LLaVA.
    Other turns are returned unchanged.

    Args:
        conversations: LLaVA turns; not modified.

    Returns:
        New list of new turn dicts.
    """
    out: list[dict] = []
    for turn in conversations:
        turn = dict(turn)
        value = turn.get("value")
        if isinstance(value, str) and IMAGE_PLACEHOLDER in value:
            rest = value.replace(IMAGE_PLACEHOLDER, "").strip()
            turn["value"] = (IMAGE_PLACEHOLDER + "\n" + rest).strip()
        out.append(turn)
    return out


def validate_conversation(conversations: list[dict], *, require_reply: bool = True) -> list[dict]:
    """Check a conversation's shape and return its turns (a leading `gpt` turn dropped, as LLaVA does).

    Args:
        conversations: LLaVA turns `{"from": "human"|"gpt", "value": str}`.
        require_reply: whether the conversation must end with a `gpt` turn (training samples); prompts end
            with a `human` turn.

    Returns:
        The turns, alternating human/gpt and starting with human (the input list is not modified).

    Raises:
        ValueError: empty conversation, a turn that is not a dict, lacks a string `value` or has an unknown
            role, roles out of order, or (with `require_reply`) no final assistant reply. The message names the
            offending turn's index in the input.
    """
    if not isinstance(conversations, (list, tuple)) or not conversations:
        raise ValueError(f"conversation must be a non-empty list of turns, got {conversations!r}")
    for k, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise ValueError(f"conversation turn {k} is not a dict: {turn!r}")
        if turn.get("from") not in (HUMAN, GPT):
            raise ValueError(f"conversation turn {k} has from={turn.get('from')!r}, expected 'human' or 'gpt'")
        if not isinstance(turn.get("value"), str):
            raise ValueError(f"conversation turn {k} has no string 'value' (got {turn.get('value')!r})")
    # LLaVA's preprocess_v1 skips a first turn that is not from the human (some ShareGPT samples).
    start = 1 if conversations[0]["from"] == GPT else 0
    turns = list(conversations[start:])
    if not turns:
        raise ValueError("conversation has no human turn (its only turn, turn 0, is from 'gpt')")
    for k, turn in enumerate(turns):
        expected = HUMAN if k % 2 == 0 else GPT
        if turn["from"] != expected:
            raise ValueError(f"conversation turn {k + start} is from {turn['from']!r}, expected {expected!r}")
    if require_reply and turns[-1]["from"] != GPT:
        raise ValueError(
            f"conversation turn {len(turns) - 1 + start} is a human turn with no assistant reply after it"
        )
    return turns


# --------------------------------------------------------------------------------------------------------------
# Per-tokenizer facts, computed once per tokenizer object


def _strip_prepend_normalizer(node: dict | None) -> tuple[dict | None, bool]:
    """Remove `Prepend` normalizers (legacy SentencePiece prefix space) from a serialised normalizer."""
    if not node:
        return node, False
    if node.get("type") == "Prepend":
        return None, True
    if node.get("type") == "Sequence":
        kept, changed = [], False
        for child in node.get("normalizers", []):
            new, child_changed = _strip_prepend_normalizer(child)
            changed |= child_changed
            if new is not None:
                kept.append(new)
        node["normalizers"] = kept
        return node, changed
    return node, False


def _disable_prefix_pretokenizer(node: dict | None) -> bool:
    """Switch off prefix-space insertion in a serialised pre-tokenizer, in place; True if anything changed."""
    if not node:
        return False
    kind = node.get("type")
    if kind == "Metaspace":
        # Older serialisations carry `add_prefix_space`, newer ones `prepend_scheme`.
        scheme = node.get("prepend_scheme", "always" if node.get("add_prefix_space", True) else "never")
        if "add_prefix_space" in node:
            node["add_prefix_space"] = False
        node["prepend_scheme"] = "never"
        return scheme != "never"
    if kind == "ByteLevel":
        changed = bool(node.get("add_prefix_space"))
        node["add_prefix_space"] = False
        return changed
    if kind == "Sequence":
        # A list, not a generator: every child must be rewritten.
        return any([_disable_prefix_pretokenizer(child) for child in node.get("pretokenizers", [])])
    return False


def _component_json(component: object) -> dict | None:
    """The JSON of a backend normalizer / pre-tokenizer (None when unset)."""
    return None if component is None else json.loads(component.__getstate__())


def _prefix_free_backend(tokenizer: PreTrainedTokenizerBase) -> Tokenizer | None:
    """A copy of the tokenizer's backend that inserts no prefix space, or None if the tokenizer inserts none.

    Tokenizers without a Rust backend (pure-Python ones) also give None: their pieces are encoded as is.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        return None
    # Cheap look at the two components first: serialising a 128k-entry vocabulary is only worth it if needed.
    _, normalizer_adds = _strip_prepend_normalizer(_component_json(backend.normalizer))
    pretokenizer_adds = _disable_prefix_pretokenizer(_component_json(backend.pre_tokenizer))
    if not (normalizer_adds or pretokenizer_adds):
        return None
    spec = json.loads(backend.to_str())
    spec["normalizer"], _ = _strip_prepend_normalizer(spec.get("normalizer"))
    _disable_prefix_pretokenizer(spec.get("pre_tokenizer"))
    clone = Tokenizer.from_str(json.dumps(spec))
    clone.no_truncation()
    clone.no_padding()
    return clone


@dataclass
class _TokenizerFacts:
    """What the templates need to know about one tokenizer (computed lazily, cached per tokenizer object)."""

    size: int
    added_ids: frozenset[int]
    prefix_free: Tokenizer | None = None
    prefix_checked: bool = False
    adds_bos: bool | None = None
    checked_tokens: set[str] = field(default_factory=set)


_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _facts(tokenizer: PreTrainedTokenizerBase) -> _TokenizerFacts:
    """The cached facts of `tokenizer`, recomputed if its vocabulary grew (tokens added after first use)."""

    def fresh() -> _TokenizerFacts:
        return _TokenizerFacts(len(tokenizer), frozenset(getattr(tokenizer, "added_tokens_decoder", {})))

    try:
        facts = _FACTS.get(tokenizer)
    except TypeError:  # an unhashable tokenizer class: no caching
        return fresh()
    if facts is None or facts.size != len(tokenizer):
        facts = fresh()
        _FACTS[tokenizer] = facts
    return facts


def _natural(text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's own ids for `text` as a whole string, without BOS/EOS."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def _encode_piece(text: str, tokenizer: PreTrainedTokenizerBase, prev: int | None) -> list[int]:
    """Ids of one piece of text (no `<image>` in it), as the tokenizer would produce them in context.

    Args:
        text: the piece; special-token literals in it (`</s>`, `<|eot_id|>`) become their ids.
        tokenizer: the LLM's tokenizer.
        prev: the id right before the piece: None at the sequence start and `IMAGE_TOKEN_INDEX` after an
            image, where the piece starts a fresh string (LLaVA tokenises each chunk between images on its own,
            so the tokenizer's prefix space applies); otherwise the piece continues the text before it.
    """
    if prev is None or prev == IMAGE_TOKEN_INDEX:
        return _natural(text, tokenizer)
    facts = _facts(tokenizer)
    if not facts.prefix_checked:
        facts.prefix_free = _prefix_free_backend(tokenizer)
        facts.prefix_checked = True
    if facts.prefix_free is None:  # byte-level BPE etc.: a piece encodes the same alone as in context
        return _natural(text, tokenizer)
    if prev in facts.added_ids:
        # Added tokens split the input, and the text after one gets whatever prefix treatment the tokenizer
        # gives such splits (none with prepend_scheme "first", a "▁" with legacy "always"): put the same token
        # in front to get exactly that treatment, then drop it.
        ids = _natural(tokenizer.convert_ids_to_tokens(prev) + text, tokenizer)
        if ids[:1] == [prev]:
            return ids[1:]
        # A token that does not re-encode as itself (exotic added-token flags): treat the piece as mid-text.
    # Mid-text after ordinary characters no tokenizer inserts a prefix, so the text up to the first added token
    # comes from the prefix-free copy; from that token on the splits are independent of what precedes them.
    enc = facts.prefix_free.encode(text, add_special_tokens=False)
    cut = next((k for k, tid in enumerate(enc.ids) if tid in facts.added_ids), None)
    if cut is None:
        return list(enc.ids)
    return list(enc.ids[:cut]) + _natural(text[enc.offsets[cut][0] :], tokenizer)


def _encode_pieces(
    pieces: list[tuple[str, bool]], tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[int]]:
    """Ids and labels of (text, supervised) pieces; each `<image>` becomes one masked `IMAGE_TOKEN_INDEX`."""
    ids: list[int] = []
    labels: list[int] = []
    for text, supervised in pieces:
        for k, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)
                labels.append(IGNORE_INDEX)
            if chunk:
                seg = _encode_piece(chunk, tokenizer, ids[-1] if ids else None)
                ids.extend(seg)
                labels.extend(seg if supervised else [IGNORE_INDEX] * len(seg))
    return ids, labels


def tokenize_text(text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokenise `text` as a fresh string, mapping each `<image>` to one `IMAGE_TOKEN_INDEX`; no BOS/EOS added."""
    return _encode_pieces([(text, False)], tokenizer)[0]


def tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `tokenizer` itself prepends its BOS token when encoding with special tokens."""
    facts = _facts(tokenizer)
    if facts.adds_bos is None:
        bos = tokenizer.bos_token_id
        ids = list(tokenizer.encode("a", add_special_tokens=True))
        facts.adds_bos = bos is not None and len(ids) > 1 and ids[0] == bos
    return facts.adds_bos


# --------------------------------------------------------------------------------------------------------------
# Templates


class ChatTemplate:
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

    def segments(self, conversations: list[dict], tokenizer: PreTrainedTokenizerBase) -> list[tuple[str, bool]]:
        """(text, supervised) pieces of a validated conversation, in order."""
        raise NotImplementedError

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
        facts = _facts(tokenizer)
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
        ids, labels = _encode_pieces(pieces, tokenizer)
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
    assistant role (reference-spec §3.1). The released DC Llama3-8B checkpoint was trained and evaluated that
    way, so use this template to fine-tune or evaluate it; use `llama_3` for anything trained here from scratch.
    """

    name = "llama_3_dc"
    assistant_role = "system"


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


TEMPLATES: dict[str, type[ChatTemplate]] = {
    cls.name: cls for cls in (Plain, VicunaV1, Phi2, Llama3, Llama3DC, ChatML)
}


def get_template(name: str) -> ChatTemplate:
    """The template registered under `name` (`llm.template` / `stage.template` in config)."""
    if name not in TEMPLATES:
        raise ValueError(f"template={name!r}: expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]()
