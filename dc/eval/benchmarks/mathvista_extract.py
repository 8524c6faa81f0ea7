"""MathVista answer extraction (rule-based) and normalisation (MathVista ``calculate_score`` rules).

Extraction turns a free-form response into a short answer. The official pipeline asks GPT to do it
after a few quick checks; here the quick checks are followed by rules instead (the model judge is an
optional extra in :mod:`mathvista`):

- multiple choice: the response *is* a choice text; else an option letter (``"(B)"``, ``"B."``,
  ``"The answer is B"``; see :mod:`choices`); else the raw response (normalisation then picks the
  closest choice).
- integer / float: the response parses as a number; else ``The answer is "x".``; else the *last*
  number in the response (DC's hint asks for "the final value ... at the end").
- list: the last ``[...]`` that parses as a Python list.

Normalisation (official): multiple choice -> a letter maps to its choice text, anything else to the
choice with the smallest Levenshtein distance; integer -> ``str(int(float(x)))``; float ->
``str(round(float(x), precision))``; list -> ``str(x)``. Correct iff it equals the stored answer.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from typing import Any

from dc.eval.benchmarks.choices import extract_letter, letters_for

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")
_QUOTED = re.compile(r'The answer is "(.*)"\.')
_LIST = re.compile(r"\[[^\[\]]*\]")
_PAREN_LETTER = re.compile(r"\(([a-zA-Z])\)")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert/delete/substitute, cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def quick_extract(response: str, problem: Mapping[str, Any]) -> str | None:
    """The official checks that run before the (GPT) extractor; None when they do not apply."""
    r = response.strip()
    if not r:
        return ""
    choices = problem.get("choices") or []
    if problem.get("question_type") == "multi_choice" and r in choices:
        return r
    if problem.get("answer_type") == "integer":
        try:
            return str(int(r))
        except ValueError:
            pass
    if problem.get("answer_type") == "float":
        try:
            return str(float(r))
        except ValueError:
            pass
    m = _QUOTED.search(r)
    return m.group(1) if m else None


def rule_extract(response: str, problem: Mapping[str, Any]) -> str:
    """Rule-based stand-in for the GPT extraction step (see module docstring)."""
    quick = quick_extract(response, problem)
    if quick is not None:
        return quick
    r = response.strip()
    atype = problem.get("answer_type")
    if problem.get("question_type") == "multi_choice":
        choices = [str(c) for c in problem.get("choices") or []]
        letters = letters_for(len(choices))
        letter = extract_letter(r, letters, dict(zip(letters, choices)))
        return letter if letter is not None else r
    if atype in ("integer", "float"):
        nums = _NUMBER.findall(r)
        return nums[-1].replace(",", "") if nums else r
    if atype == "list":
        for cand in reversed(_LIST.findall(r)):
            try:
                value = ast.literal_eval(cand)
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, list):
                return str(value)
    return r


def normalize_extraction(extraction: Any, problem: Mapping[str, Any]) -> str | None:
    """Official ``normalize_extracted_answer``."""
    choices: Sequence[str] = [str(c) for c in problem.get("choices") or []]
    if problem.get("question_type") == "multi_choice":
        text = str(extraction).strip() if extraction is not None else ""
        found = _PAREN_LETTER.findall(text)
        if found:
            text = found[0].upper()
        letters = letters_for(len(choices))
        if text in letters:
            return choices[letters.index(text)]
        if not choices:
            return text
        return min(choices, key=lambda c: levenshtein(text, c))  # first of equals, as official
    atype = problem.get("answer_type")
    try:
        if atype == "integer":
            return str(int(float(extraction)))
        if atype == "float":
            return str(round(float(extraction), int(problem.get("precision") or 0)))
    except (TypeError, ValueError):
        return None
    return None if extraction is None else str(extraction)
