"""Rule-based option-letter extraction shared by the multiple-choice benchmarks.

The rules follow the heuristic stage of MMBench/VLMEvalKit answer matching (no model judge):

1. A leading letter followed by ``.``, ``:``, ``)`` or nothing: ``"B"``, ``"B."``, ``"(B) cat"``, ``"B: cat"``.
2. Otherwise, after turning ``.()[],:;!*#{}`` into spaces, exactly one of the valid letters appears
   as a standalone token (``"The answer is B"``). Two or more different letters -> ambiguous.
3. Otherwise, exactly one option's text occurs (case-insensitively) in the answer, provided the answer
   is not much longer than the options (a long explanation that quotes several options is rejected).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# A letter followed by a delimiter or the end; "A or B" is left to rule 2 (and found ambiguous).
_LEADING = re.compile(r"^\s*\(?([A-Z])(?:[.:)]|\s*$)")
_SPLIT_CHARS = ".()[],:;!*#{}"


def letters_for(n: int) -> list[str]:
    """``["A", "B", ...]`` for ``n`` options."""
    return [chr(ord("A") + i) for i in range(n)]


def extract_letter(
    answer: str, letters: Sequence[str], options: Mapping[str, str] | None = None
) -> str | None:
    """Find the option letter a free-form answer picks.

    Args:
        answer: Raw model output.
        letters: Valid letters for this question (e.g. ``["A", "B", "C"]``).
        options: ``letter -> option text`` for rule 3 (optional).

    Returns:
        The letter, or None when no rule gives a unique answer.
    """
    valid = set(letters)
    m = _LEADING.match(answer)
    if m and m.group(1) in valid:
        return m.group(1)
    cleaned = answer
    for ch in _SPLIT_CHARS:
        cleaned = cleaned.replace(ch, " ")
    tokens = set(cleaned.split())
    found = [c for c in letters if c in tokens]
    if len(found) == 1:
        return found[0]
    if found:
        return None
    if options:
        low = answer.lower()
        total = sum(len(str(v)) for v in options.values())
        if len(low) > 2 * total:
            return None
        hits = [k for k in letters if k in options and str(options[k]).lower() and str(options[k]).lower() in low]
        if len(hits) == 1:
            return hits[0]
    return None
