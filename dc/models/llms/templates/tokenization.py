"""Tokenising a template's text pieces exactly as the tokenizer would tokenise the whole text.

Each piece is tokenised on its own without special tokens and the ids are concatenated, so a supervised span is
exactly the reply's tokens. That must give the ids that tokenising the whole text would give, or training sees
token sequences the LLM never saw in pre-training. Two tokenizer behaviours make that non-trivial:

* **Prefix spaces.** SentencePiece-style tokenizers (Llama-2/Vicuna, Yi: a `Metaspace` pre-tokenizer or a
  `Prepend("▁")` normalizer) put a "▁" in front of every string they encode, so `"USER:"` encoded on its own
  gives `▁USER:` where the whole text, after `</s>`, has `USER:`. A piece that continues ordinary text is
  therefore encoded with a copy of the backend tokenizer whose prefix insertion is switched off; a piece that
  follows a special token is encoded behind that same token (then dropped), which reproduces whatever the
  tokenizer does after special tokens (nothing with `prepend_scheme="first"`, a "▁" with legacy `"always"`).
  A piece that *starts* a text (the first piece, and each piece after `<image>`) keeps the tokenizer's own
  behaviour: LLaVA's `tokenizer_image_token` tokenises each chunk between images as a fresh string, so this
  reproduces its ids, including the "▁" that Llama-2 puts before the `\\n` after `<image>`. Net effect: for
  text-only conversations the ids equal `tokenizer(whole_text)`; tests check this for both prefix schemes.
* **BOS** is left to the templates (`ChatTemplate.add_bos`): pieces are encoded with `add_special_tokens=False`.

Facts about a tokenizer (its prefix-free copy, whether it adds BOS) are computed once per tokenizer object and kept
in a weak cache, so they go away with the tokenizer.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from dc.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX


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
class TokenizerFacts:
    """What the templates need to know about one tokenizer (computed lazily, cached per tokenizer object)."""

    size: int
    added_ids: frozenset[int]
    prefix_free: Tokenizer | None = None
    prefix_checked: bool = False
    adds_bos: bool | None = None
    checked_tokens: set[str] = field(default_factory=set)


_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_facts(tokenizer: PreTrainedTokenizerBase) -> TokenizerFacts:
    """The cached facts of `tokenizer`, recomputed if its vocabulary grew (tokens added after first use)."""

    def fresh() -> TokenizerFacts:
        return TokenizerFacts(len(tokenizer), frozenset(getattr(tokenizer, "added_tokens_decoder", {})))

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
    # verbose=False: no "sequence length is longer than ... will result in indexing errors" warning for a long
    # text; the sample's length is checked after visual-token expansion (`data.overlength`), never by the tokenizer.
    return list(tokenizer.encode(text, add_special_tokens=False, verbose=False))


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
    facts = tokenizer_facts(tokenizer)
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


def encode_pieces(pieces: list[tuple[str, bool]], tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
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


def tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `tokenizer` itself prepends its BOS token when encoding with special tokens."""
    facts = tokenizer_facts(tokenizer)
    if facts.adds_bos is None:
        bos = tokenizer.bos_token_id
        ids = list(tokenizer.encode("a", add_special_tokens=True))
        facts.adds_bos = bos is not None and len(ids) > 1 and ids[0] == bos
    return facts.adds_bos
