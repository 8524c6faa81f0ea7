"""VQA answer processing and VQA accuracy, reimplemented from the official rules (quirks included).

Two building blocks, shared by every official VQA script:

- :func:`process_punctuation`: for each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``, delete it
  everywhere when it touches a space in the input (``"p "`` or ``" p"``) or the input has a
  digit-comma-digit group, otherwise replace it by a space. Then delete ``.`` not followed by a digit,
  **at most 32 of them**: the official code passes ``re.UNICODE`` (= 32) where ``re.sub`` takes its
  ``count`` argument.
- :func:`process_digit_article`: lower-case, split on whitespace, number words ``none, zero..ten`` ->
  digits, drop ``a/an/the``, then replace each word found in :data:`CONTRACTIONS`, the official table
  as published (keys such as ``Im`` never match the lower-cased words, ``somebody'd`` maps to
  ``somebodyd``, ``shes`` is not in it).

Built from them:

- :func:`normalize_answer` -- the EvalAI answer processor (LLaVA ``m4c_evaluator.EvalAIAnswerProcessor``,
  used by ``convert_vqav2_for_submission`` and the TextVQA evaluator): lower-case, delete ``,`` and
  ``?``, split the possessive ``'s`` off as `` 's``, trim, newlines/tabs -> spaces, then the two steps.
- :func:`vqa_accuracy` -- TextVQA's m4c evaluator: both sides through :func:`normalize_answer`.
- :func:`vqav2_accuracy` -- the VQAv2 pipeline: the prediction through :func:`normalize_answer` (LLaVA's
  submission converter), then the official ``vqaEval.py``: trim both sides; only when the human
  answers are not all identical (``if len(set(gtAnswers)) > 1``) are both sides processed again,
  with the two steps only (so no possessive split on the human side).

Accuracy of a prediction against the human answers: leave each human answer out in turn, score
``min(1, #matches among the others / 3)``, and average.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# vqaEval.py's digit-comma-digit test, and EvalAI's variant (also matches "1,,2"; commas are already
# gone when EvalAI runs it, so it never fires there).
COMMA_VQAEVAL = re.compile(r"(\d)(,)(\d)")
COMMA_EVALAI = re.compile(r"(?<=\d)(,)+(?=\d)")
# The official pattern starts with "(?!<=\d)", a lookahead for the literal text "<=" + digit that
# never matches at a period; what remains is "a period not followed by a digit".
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_COUNT = 32  # re.UNICODE, passed positionally as re.sub's count by the official code
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = ("a", "an", "the")

# The official contraction table (vqaEval.py == EvalAIAnswerProcessor.CONTRACTIONS), "key=value".
_CONTRACTION_TABLE = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd
howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've
it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've
mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've
oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't
shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've
somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's someoned=someone'd
someoned've=someone'd've someone'dve=someone'd've someonell=someone'll someones=someone's
somethingd=something'd somethingd've=something'd've something'dve=something'd've
somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've
therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've
werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd
wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split("=", 1) for pair in _CONTRACTION_TABLE.split())


def process_punctuation(text: str, *, comma_rule: re.Pattern[str] = COMMA_VQAEVAL) -> str:
    """Official punctuation step (see module docstring); ``comma_rule`` picks the digit-comma test."""
    out = text
    strip_all = comma_rule.search(text) is not None
    for p in PUNCTUATION:
        # The test looks at the original text, the edit applies to the running output.
        if strip_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Official number-word / article / contraction step."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """EvalAI answer processor (LLaVA's ``EvalAIAnswerProcessor.__call__``)."""
    t = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    t = t.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(t, comma_rule=COMMA_EVALAI))


def _leave_one_out(pred: str, gts: Sequence[str]) -> float:
    total = sum(1 for g in gts if g == pred)
    # Matches among the others = all matches minus this one if it matched.
    return sum(min(1.0, (total - (g == pred)) / 3.0) for g in gts) / len(gts)


def vqa_accuracy(prediction: str, gt_answers: Sequence[str], *, normalize: bool = True) -> float:
    """Leave-one-out VQA accuracy in ``[0, 1]`` with both sides EvalAI-normalised (TextVQA m4c rule).

    Args:
        prediction: Raw model answer.
        gt_answers: Human answers (10 for VQAv2/TextVQA; any count >= 1 works).
        normalize: Apply :func:`normalize_answer` to prediction and ground truths.

    Returns:
        ``mean_i min(1, #{j != i : gt_j == pred} / 3)``; 0 without ground truths.
    """
    if not gt_answers:
        return 0.0
    pred = normalize_answer(prediction) if normalize else prediction
    return _leave_one_out(pred, [normalize_answer(a) if normalize else a for a in gt_answers])


def _trim(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqav2_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """VQAv2 accuracy as LLaVA's converter + the official ``vqaEval.py`` compute it (module docstring).

    Args:
        prediction: Raw model answer.
        gt_answers: The human answers exactly as in the annotation file.

    Returns:
        Leave-one-out accuracy in ``[0, 1]``; 0 without ground truths.
    """
    if not gt_answers:
        return 0.0
    pred = _trim(normalize_answer(prediction))
    gts = [_trim(a) for a in gt_answers]
    if len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(g)) for g in gts]
        pred = process_digit_article(process_punctuation(pred))
    return _leave_one_out(pred, gts)
