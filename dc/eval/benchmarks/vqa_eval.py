"""VQA answer normalisation and VQA accuracy (VQAv2 / TextVQA / EvalAI rules), written from the rules.

Normalisation (the EvalAI answer processor = official VQA eval script steps, in order):

1. lower-case; delete ``,`` and ``?``; split the possessive ``'s`` off as `` 's``; trim;
   newlines/tabs become spaces.
2. punctuation: for each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` -- delete it when it
   touches a space in the input (``"p "`` or ``" p"``) or when the input contains a digit-comma-digit
   group, otherwise replace it by a space. Then delete every ``.`` that is not followed by a digit
   (the official regex meant "not a decimal point" but, as written, only looks ahead; we reproduce
   what it does, so ``"3."`` -> ``"3"`` while ``"3.5"`` stays).
3. per whitespace token: number words ``none, zero..ten`` -> digits; drop the articles
   ``a, an, the``; map apostrophe-less contractions (``dont``) to their apostrophe form (``don't``).

VQA accuracy of a prediction against 10 human answers: leave each human answer out in turn, score
``min(1, #matches among the other 9 / 3)``, and average the 10 scores.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!"]
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}

# Contractions in their written form; the map sends every apostrophe-less spelling to it.
_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll let's ma'am mightn't
mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't she'd've she's
should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll that's there'd
there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've
weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's
who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd
you'd've you'll you're you've
""".split()
# Apostrophe-less spellings that are ordinary words (or, like "im"/"id", never matched by the
# official map because its keys for them are capitalised); mapping them would change real answers.
_NOT_CONTRACTIONS = {"shed", "shell", "hell", "well", "were", "wed", "ill", "id", "im", "ive", "its"}


def _contraction_map() -> dict[str, str]:
    out: dict[str, str] = {}
    for full in _CONTRACTIONS:
        pos = [i for i, ch in enumerate(full) if ch == "'"]
        # Every way of dropping one or more apostrophes ("couldnt've", "couldn'tve", "couldntve").
        for r in range(1, len(pos) + 1):
            for drop in itertools.combinations(pos, r):
                variant = "".join(ch for i, ch in enumerate(full) if i not in drop)
                if variant not in _NOT_CONTRACTIONS:
                    out.setdefault(variant, full)
    return out


CONTRACTIONS: dict[str, str] = _contraction_map()


def process_punctuation(text: str) -> str:
    """Step 2 of the normalisation (punctuation and periods)."""
    out = text
    strip_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCTUATION:
        # The test looks at the original text, the edit applies to the running output.
        if strip_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def process_digit_article(text: str) -> str:
    """Step 3 of the normalisation (number words, articles, contractions)."""
    words = []
    for w in text.lower().split():
        w = _NUMBER_WORDS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(CONTRACTIONS.get(w, w))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Full VQA/EvalAI answer normalisation (steps 1-3 of the module docstring)."""
    t = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    t = t.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(t))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str], *, normalize: bool = True) -> float:
    """Leave-one-out VQA accuracy in ``[0, 1]``.

    Args:
        prediction: Raw model answer.
        gt_answers: Human answers (10 for VQAv2/TextVQA; any count >= 1 works).
        normalize: Apply :func:`normalize_answer` to prediction and ground truths.

    Returns:
        ``mean_i min(1, #{j != i : gt_j == pred} / 3)``.
    """
    if not gt_answers:
        return 0.0
    pred = normalize_answer(prediction) if normalize else prediction
    gts = [normalize_answer(a) if normalize else a for a in gt_answers]
    total_matches = sum(1 for g in gts if g == pred)
    score = 0.0
    for g in gts:
        # Matches among the others = all matches minus this one if it matched.
        others = total_matches - (1 if g == pred else 0)
        score += min(1.0, others / 3.0)
    return score / len(gts)
