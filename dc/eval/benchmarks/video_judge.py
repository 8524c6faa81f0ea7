"""The GPT-judge prompts of the video benchmarks (verbatim) and an offline parser for the judge's replies.

Prompts come from Video-ChatGPT's `quantitative_evaluation/` scripts as copied into the Dense Connector
(`scripts/v1_5/eval/video/gpt_eval/`, commit 043632a) and FreeVA; the text below is theirs, chunk for chunk (Python
joins adjacent literals, so "task:" "------" "##INSTRUCTIONS: " has no separators in the sent text). The
published scripts send `[system, user]`, no temperature (the API default, 1.0) and no max_tokens.

The judge replies with a Python-dict-like string (`{'pred': 'yes', 'score': 4}`); the published scripts read it
with `ast.literal_eval` and re-ask until that succeeds. `parse_judge_dict` accepts the same flat literals without
evaluating anything: string keys; string, number, True/False/None values; adjacent string literals joined, as in
Python; anything else -> None (counted as `judge_unparsable`; the published scripts would have asked again). The
criterion prompts' own example `{''score': 4.8}` is not a valid literal (literal_eval rejects it too).

Scores follow the published aggregation: `int(score)` (4.8 -> 4; a numeric string is accepted as `int("4")` is), mean
over the graded replies; QA accuracy = yes / (yes + no), where a reply's `pred` counts as yes if it contains "yes"
(lower-cased), else no if it contains "no", else neither.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_JUDGE_MODEL = "gpt-3.5-turbo-0125"  # FreeVA: scores shift materially across 0301 / 0613 / 0125
DEFAULT_JUDGE_TEMPERATURE = 1.0  # the published scripts set none: the API default
DEFAULT_JUDGE_MAX_TOKENS = 256  # they set none either; a dict reply is ~15 tokens, this only stops a runaway reply

# One source literal per line (some longer than 120 characters) so each can be diffed against the published scripts.

# -- Zero-shot QA (MSVD / MSRVTT / ActivityNet): Video-ChatGPT evaluate_activitynet_qa.py, DC eval_video_qa.py.
QA_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer pairs. "
    "Your task is to compare the predicted answer with the correct answer and determine if they match meaningfully. Here's how you can accomplish the task:"
    "------"
    "##INSTRUCTIONS: "
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
QA_USER = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {pred}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, with 5 indicating the highest meaningful match. "
    "Please generate the response in the form of a Python dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of 'yes' or 'no' and value of 'score' is in INTEGER, not STRING."
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
    "For example, your response should look like this: {{'pred': 'yes', 'score': 4.8}}."
)


# -- Video-ChatGPT generative benchmark: evaluate_benchmark_{1..5}_*.py (DC scripts/v1_5/eval/video/gpt_eval/).
def _tail(what: str) -> str:
    """The shared end of the five criterion prompts; braces doubled for the later `str.format`."""
    return (
        f"Please generate the response in the form of a Python dictionary string with keys 'score', where its value is {what} in INTEGER, not STRING."
        "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
        "For example, your response should look like this: {{''score': 4.8}}."
    )


_PAIR = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {pred}\n\n"
)
BENCH_SYSTEM = {
    "correctness": (
        "You are an intelligent chatbot designed for evaluating the factual accuracy of generative outputs for video-based question-answer pairs. "
        "Your task is to compare the predicted answer with the correct answer and determine if they are factually consistent. Here's how you can accomplish the task:"
        "------"
        "##INSTRUCTIONS: "
        "- Focus on the factual consistency between the predicted answer and the correct answer. The predicted answer should not contain any misinterpretations or misinformation.\n"
        "- The predicted answer must be factually accurate and align with the video content.\n"
        "- Consider synonyms or paraphrases as valid matches.\n"
        "- Evaluate the factual accuracy of the prediction compared to the answer."
    ),
    "detail": (
        "You are an intelligent chatbot designed for evaluating the detail orientation of generative outputs for video-based question-answer pairs. "
        "Your task is to compare the predicted answer with the correct answer and determine its level of detail, considering both completeness and specificity. Here's how you can accomplish the task:"
        "------"
        "##INSTRUCTIONS: "
        "- Check if the predicted answer covers all major points from the video. The response should not leave out any key aspects.\n"
        "- Evaluate whether the predicted answer includes specific details rather than just generic points. It should provide comprehensive information that is tied to specific elements of the video.\n"
        "- Consider synonyms or paraphrases as valid matches.\n"
        "- Provide a single evaluation score that reflects the level of detail orientation of the prediction, considering both completeness and specificity."
    ),
    "context": (
        "You are an intelligent chatbot designed for evaluating the contextual understanding of generative outputs for video-based question-answer pairs. "
        "Your task is to compare the predicted answer with the correct answer and determine if the generated response aligns with the overall context of the video content. Here's how you can accomplish the task:"
        "------"
        "##INSTRUCTIONS: "
        "- Evaluate whether the predicted answer aligns with the overall context of the video content. It should not provide information that is out of context or misaligned.\n"
        "- The predicted answer must capture the main themes and sentiments of the video.\n"
        "- Consider synonyms or paraphrases as valid matches.\n"
        "- Provide your evaluation of the contextual understanding of the prediction compared to the answer."
    ),
    "temporal": (
        "You are an intelligent chatbot designed for evaluating the temporal understanding of generative outputs for video-based question-answer pairs. "
        "Your task is to compare the predicted answer with the correct answer and determine if they correctly reflect the temporal sequence of events in the video content. Here's how you can accomplish the task:"
        "------"
        "##INSTRUCTIONS: "
        "- Focus on the temporal consistency between the predicted answer and the correct answer. The predicted answer should correctly reflect the sequence of events or details as they are presented in the video content.\n"
        "- Consider synonyms or paraphrases as valid matches, but only if the temporal order is maintained.\n"
        "- Evaluate the temporal accuracy of the prediction compared to the answer."
    ),
    "consistency": (
        "You are an intelligent chatbot designed for evaluating the consistency of generative outputs for similar video-based question-answer pairs. "
        "You will be given two very similar questions, a common answer common to both the questions and predicted answers for the two questions ."
        "Your task is to compare the predicted answers for two very similar question, with a common correct answer and determine if they are consistent. Here's how you can accomplish the task:"
        "------"
        "##INSTRUCTIONS: "
        "- Focus on the consistency between the two predicted answers and the correct answer. Both predicted answers should correspond to the correct answer and to each other, and should not contain any contradictions or significant differences in the conveyed information.\n"
        "- Both predicted answers must be consistent with each other and the correct answer, in terms of the information they provide about the video content.\n"
        "- Consider synonyms or paraphrases as valid matches, but only if they maintain the consistency in the conveyed information.\n"
        "- Evaluate the consistency of the two predicted answers compared to the correct answer."
    ),
}
BENCH_USER = {
    "correctness": _PAIR
    + (
        "Provide your evaluation only as a factual accuracy score where the factual accuracy score is an integer value between 0 and 5, with 5 indicating the highest level of factual consistency. "
    )
    + _tail("the factual accuracy score"),
    "detail": _PAIR
    + (
        "Provide your evaluation only as a detail orientation score where the detail orientation score is an integer value between 0 and 5, with 5 indicating the highest level of detail orientation. "
    )
    + _tail("the detail orientation score"),
    "context": _PAIR
    + (
        "Provide your evaluation only as a contextual understanding score where the contextual understanding score is an integer value between 0 and 5, with 5 indicating the highest level of contextual understanding. "
    )
    + _tail("contextual understanding score"),
    "temporal": _PAIR
    + (
        "Provide your evaluation only as a temporal accuracy score where the temporal accuracy score is an integer value between 0 and 5, with 5 indicating the highest level of temporal consistency. "
    )
    + _tail("the temporal accuracy score"),
    "consistency": (
        "Please evaluate the following video-based question-answer pair:\n\n"
        "Question 1: {question1}\n"
        "Question 2: {question2}\n"
        "Correct Answer: {answer}\n"
        "Predicted Answer to Question 1: {pred1}\n"
        "Predicted Answer to Question 2: {pred2}\n\n"
        "Provide your evaluation only as a consistency score where the consistency score is an integer value between 0 and 5, with 5 indicating the highest level of consistency. "
    )
    + _tail("the consistency score"),
}
"""User-message templates (`str.format` fields: question, answer, pred; consistency: question1/2, answer, pred1/2)."""


def qa_messages(question: str, answer: str, pred: str) -> list[dict[str, str]]:
    """The zero-shot-QA judge messages for one prediction."""
    user = QA_USER.format(question=question, answer=answer, pred=pred)
    return [{"role": "system", "content": QA_SYSTEM}, {"role": "user", "content": user}]


def bench_messages(criterion: str, **fields: str) -> list[dict[str, str]]:
    """The generative-benchmark judge messages for one criterion (fields as in `BENCH_USER`)."""
    return [
        {"role": "system", "content": BENCH_SYSTEM[criterion]},
        {"role": "user", "content": BENCH_USER[criterion].format(**fields)},
    ]


# ------------------------------------------------------------------------------------------------------------------
# Reply parsing

_TOKEN = re.compile(
    r"""
    \s*(?:
      (?P<str>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
    | (?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<name>True|False|None)\b
    | (?P<punct>[{}:,])
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}
_NAMES: dict[str, Any] = {"True": True, "False": False, "None": None}


def _unquote(lit: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), lit[1:-1])


def _tokens(text: str) -> list[tuple[str, Any]] | None:
    out: list[tuple[str, Any]] = []
    pos, end = 0, len(text.rstrip())
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        pos = m.end()
        kind = m.lastgroup or ""
        raw = m.group(kind)
        if kind == "str":
            if out and out[-1][0] == "str":  # adjacent literals join, as in Python source
                out[-1] = ("str", out[-1][1] + _unquote(raw))
            else:
                out.append(("str", _unquote(raw)))
        elif kind == "num":
            out.append(("value", float(raw) if any(c in raw for c in ".eE") else int(raw)))
        elif kind == "name":
            out.append(("value", _NAMES[raw]))
        else:
            out.append((raw, raw))
    return out


def parse_judge_dict(reply: str) -> dict[str, Any] | None:
    """A flat Python dict literal (the judge's reply) -> dict, without evaluating code; None if it is not one."""
    toks = _tokens(reply)
    if not toks or toks[0][0] != "{" or toks[-1][0] != "}":
        return None
    out: dict[str, Any] = {}
    i, last = 1, len(toks) - 1
    while i < last:
        if i + 2 >= last or toks[i][0] != "str" or toks[i + 1][0] != ":" or toks[i + 2][0] not in ("str", "value"):
            return None
        out[toks[i][1]] = toks[i + 2][1]
        i += 3
        if i < last:  # items are separated by commas; one trailing comma is allowed
            if toks[i][0] != ",":
                return None
            i += 1
    return out


def reply_score(reply: Mapping[str, Any] | None) -> int | None:
    """`int(reply['score'])` as the published scripts compute it, or None when that would fail."""
    if reply is None or "score" not in reply or isinstance(reply["score"], bool) or reply["score"] is None:
        return None
    try:
        return int(reply["score"])
    except (TypeError, ValueError, OverflowError):
        return None


def reply_verdict(reply: Mapping[str, Any] | None) -> bool | None:
    """True if `pred` contains "yes", False if it contains "no" (checked in that order, lower-cased), else None."""
    if reply is None or not isinstance(reply.get("pred"), str):
        return None
    pred = reply["pred"].lower()
    return True if "yes" in pred else False if "no" in pred else None


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean (0.0 for no values)."""
    vals = list(values)
    return sum(vals) / len(vals) if vals else 0.0
