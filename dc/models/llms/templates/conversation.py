"""Conversation checks shared by every chat template: turn shapes and where `<image>` goes.

LLaVA data conventions kept here: in a conversation with exactly one `<image>`, the tag is moved to the front of
its turn (`normalize_image_placeholder`, LLaVA's `preprocess_multimodal`); with several images every tag stays
where the text places it (interleaved images, each spliced at its own tag). A conversation that starts with a
`gpt` turn has that turn dropped (LLaVA's `preprocess_v1` does `source = source[1:]`); anything else malformed
raises `ValueError` naming the turn.
"""

from __future__ import annotations

from dc.constants import IMAGE_PLACEHOLDER

HUMAN, GPT = "human", "gpt"


def count_image_tags(conversations: list[dict]) -> int:
    """Number of `<image>` tags over all turns."""
    return sum(t["value"].count(IMAGE_PLACEHOLDER) for t in conversations if isinstance(t.get("value"), str))


def normalize_image_placeholder(conversations: list[dict]) -> list[dict]:
    """With exactly one `<image>` in the conversation, move it to the front of its turn (LLaVA's single-image rule).

    That turn becomes `"<image>\\n" + rest` (the rest stripped; just `"<image>"` when nothing else is left). A
    conversation with several tags keeps them where they are (interleaved images), and one without is unchanged.

    Args:
        conversations: LLaVA turns; not modified.

    Returns:
        New list of new turn dicts.
    """
    if count_image_tags(conversations) != 1:
        return [dict(turn) for turn in conversations]
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
        raise ValueError(f"conversation turn {len(turns) - 1 + start} is a human turn with no assistant reply after it")
    return turns
