"""Loading the LLM's tokenizer: a tokenizer object (built-in ones come from their config `_target_`) or a hub id /
local directory read with `AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from dc.models.hub import from_pretrained


def load_tokenizer(
    source: str | PreTrainedTokenizerBase, pad_token: str | None = None, key: str = "llm.tokenizer"
) -> PreTrainedTokenizerBase:
    """The tokenizer `source` names (or is), with `pad_token` set.

    Raises:
        ValueError: the tokenizer has no pad token and `llm.pad_token` is unset.
        OSError: the hub id / directory cannot be read (the message names `key` and how to point it elsewhere).
    """
    if isinstance(source, PreTrainedTokenizerBase):
        tokenizer = source
    else:
        tokenizer = from_pretrained(AutoTokenizer.from_pretrained, str(source), key)
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    if tokenizer.pad_token is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', source)!r} has no pad token: set llm.pad_token"
        )
    return tokenizer
