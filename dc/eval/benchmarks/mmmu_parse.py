"""MMMU response parsing and judging rules (reimplemented from the rules of MMMU's eval utils).

Multiple choice (:func:`parse_multi_choice`):
    trim ``, . ! ? ; : '`` from both ends; look for ``(X)``; else for `` X `` (space-delimited);
    else, only for answers longer than 5 words, for an option's text. Several candidates -> the one
    that occurs last. None -> a random letter (the official script does the same; we seed per sample
    so a re-score is reproducible).

Open answer (:func:`parse_open`):
    lower-case; split into lines; in each line keep the shortest tail after a key phrase
    (``could be``, ``so``, ``is``, ``thus``, ``therefore``, ``final``, ``answer``, ``result``, and ``=``
    on the last line); add every number found in those tails; normalise (numbers -> float rounded to
    2 decimals, strings lower-cased, a one-character string padded with a space on either side).
    Correct if a predicted number equals a normalised gold number, or a normalised gold string is a
    substring of a predicted string.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

_TRIM = [",", ".", "!", "?", ";", ":", "'"]
_KEYS = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}
_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCI = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")

Norm = str | float


def parse_multi_choice(response: str, letters: Sequence[str], options: Mapping[str, str], seed: str = "") -> str:
    """Return the chosen letter (random but seeded by ``seed`` when nothing matches)."""
    for ch in _TRIM:
        response = response.strip(ch)
    padded = f" {response} "
    bracket = [c for c in letters if f"({c})" in padded]
    cands, mode = (bracket, "bracket") if bracket else ([c for c in letters if f" {c} " in padded], "space")
    if not cands and len(padded.split()) > 5:
        low = padded.lower()
        cands, mode = [c for c in letters if options[c].lower() in low], "content"
    if not cands:
        return random.Random(f"mmmu:{seed}").choice(list(letters))
    if len(cands) == 1:
        return cands[0]

    def last_pos(c: str) -> int:
        if mode == "bracket":
            return padded.rfind(f"({c})")
        if mode == "space":
            return padded.rfind(f" {c} ")
        return padded.lower().rfind(options[c].lower())

    # max() keeps the first candidate on ties, as argmax does.
    return max(cands, key=last_pos)


def _is_number(s: str) -> bool:
    try:
        float(s.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(s: str) -> list[Norm]:
    """Number -> [float rounded to 2]; string -> [lower] (one char -> [" c", "c "])."""
    s = s.strip()
    if _is_number(s):
        return [round(float(s.replace(",", "")), 2)]
    s = s.lower()
    return [" " + s, s + " "] if len(s) == 1 else [s]


def extract_numbers(s: str) -> list[str]:
    """All numbers with thousands commas, in scientific notation, and plain, in that order."""
    return _NUM_COMMAS.findall(s) + _NUM_SCI.findall(s) + _NUM_SIMPLE.findall(s)


def _key_tails(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    # The official splitter also splits on ". " before a capital, which cannot match after lower().
    lines = response.split("\n")
    tails = []
    for i, line in enumerate(lines):
        keys = _KEYS + (["="] if i == len(lines) - 1 else [])
        best: str | None = None
        for k in keys:
            if k in line:
                tail = line.split(k)[-1].strip()
                # An empty tail counts as "nothing yet" (so a later, longer tail replaces it).
                if not best or len(tail) < len(best):
                    best = tail
        if best and best.strip() not in _TRIVIAL:
            tails.append(best)
    return tails or [response]


def parse_open(response: str) -> list[Norm]:
    """Candidate answers (normalised strings and floats) from an open-ended response."""
    tails = _key_tails(response)
    raw = list(tails)
    for t in tails:
        raw.extend(extract_numbers(t))
    out: list[Norm] = []
    for r in raw:
        for v in normalize_str(r):
            if v not in out:
                out.append(v)
    return out


def judge_open(gold: str | Sequence[str], preds: Sequence[Norm]) -> bool:
    """Official open-question check."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    norm: list[Norm] = [v for g in golds for v in normalize_str(str(g))]
    for p in preds:
        if isinstance(p, str):
            if any(isinstance(g, str) and g in p for g in norm):
                return True
        elif p in norm:
            return True
    return False
