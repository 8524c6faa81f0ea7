"""Rule-based option-letter matching shared by the multiple-choice benchmarks.

:func:`vlmevalkit_match` -- VLMEvalKit's ``can_infer`` (the heuristic stage of MMBench answer matching,
before any model judge), as it stood in mid-2024 when the Dense Connector paper was published:

1. An answer containing ``"Failed to obtain answer via API"`` skips to step 3; one containing a
   refusal phrase (:data:`REFUSALS`) is a refusal ("Z", counted wrong) and stops here.
2. Turn ``.()[],:;!*#{}`` into spaces and split on whitespace. Exactly one of the question's letters
   among the tokens -> that letter. No letter but a ``Z`` token -> refusal (stops here). Two or more
   letters -> nothing from this step.
3. Option text: exactly one option's text occurs (case-insensitively) in the answer -> its letter.
   ``length_limit=True`` adds the later VLMEvalKit rule that skips this step when the answer is more
   than twice as long as all option texts together (not the rule of mid-2024).

:func:`extract_letter` -- a lenient extraction (not any official rule): additionally accepts a leading
letter followed by ``.``, ``:``, ``)`` or nothing (``"B. because A is wrong"`` -> B), and always
applies the length limit of step 3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# A letter followed by a delimiter or the end; "A or B" is left to the token rule (and found ambiguous).
_LEADING = re.compile(r"^\s*\(?([A-Z])(?:[.:)]|\s*$)")
_SPLIT_CHARS = ".()[],:;!*#{}"
_API_FAILURE = "Failed to obtain answer via API"
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)


def letters_for(n: int) -> list[str]:
    """``["A", "B", ...]`` for ``n`` options."""
    return [chr(ord("A") + i) for i in range(n)]


def _tokens(answer: str) -> list[str]:
    for ch in _SPLIT_CHARS:
        answer = answer.replace(ch, " ")
    return answer.split()


def _match_text(answer: str, options: Mapping[str, str], letters: Sequence[str], length_limit: bool) -> str | None:
    low = answer.lower()
    if length_limit and len(low) > 2 * sum(len(str(v)) for v in options.values()):
        return None
    # An empty option text would occur in every answer; MMBench never has one (empty cells are
    # dropped on load, as pandas' NaN is by VLMEvalKit), so skipping it changes no official result.
    hits = [k for k in letters if k in options and str(options[k]) and str(options[k]).lower() in low]
    return hits[0] if len(hits) == 1 else None


def vlmevalkit_match(answer: str, options: Mapping[str, str], *, length_limit: bool = False) -> str | None:
    """VLMEvalKit's rule-based answer matching (module docstring).

    Args:
        answer: Raw model output.
        options: ``letter -> option text`` for the options the question has, in letter order.
        length_limit: Apply the later answer-length limit to the option-text step.

    Returns:
        The matched letter, or None (no unique match, or a refusal).
    """
    letters = list(options)
    if _API_FAILURE not in answer:
        if any(phrase in answer for phrase in REFUSALS):
            return None
        tokens = _tokens(answer)
        found = [c for c in letters if c in tokens]
        if len(found) == 1:
            return found[0]
        if not found and "Z" in tokens:
            return None  # VLMEvalKit reads this as the refusal letter "Z": no option-text step
    return _match_text(answer, options, letters, length_limit)


def extract_letter(answer: str, letters: Sequence[str], options: Mapping[str, str] | None = None) -> str | None:
    """Lenient letter extraction (module docstring; not an official rule).

    Args:
        answer: Raw model output.
        letters: Valid letters for this question (e.g. ``["A", "B", "C"]``).
        options: ``letter -> option text`` for the option-text rule (optional).

    Returns:
        The letter, or None when no rule gives a unique answer.
    """
    m = _LEADING.match(answer)
    if m and m.group(1) in set(letters):
        return m.group(1)
    found = [c for c in letters if c in set(_tokens(answer))]
    if len(found) == 1:
        return found[0]
    if found or not options:
        return None
    return _match_text(answer, options, letters, length_limit=True)
