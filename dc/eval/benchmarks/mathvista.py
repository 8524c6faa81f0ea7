"""MathVista testmini: DC's query format, rule-based answer extraction, accuracy.

Files under ``$DATA_ROOT/eval/mathvista`` (from the ``AI4Math/MathVista`` dataset repo)::

    annot_testmini.json    {pid: problem} (a list of problems, or ``testmini.json``, also works);
                           problem: question, image ("images/<pid>.jpg"), choices, unit, precision,
                           answer, question_type (multi_choice|free_form), answer_type, metadata
    images/<pid>.jpg

Prompt (DC's ``model_math_vista.create_one_query``, zero-shot, "solution" hints), with
``<image>\\n`` in front::

    Hint: <by answer type, see HINTS>
    Question: {question}[ (Unit: {unit})]
    [Choices:
    (A) ...
    (B) ...]

No suffix beyond the hint; ``max_new_tokens = 1024`` (as in the reference code).

Scoring: extraction + normalisation of :mod:`mathvista_extract`, accuracy overall and per
question type, answer type, task and skill. The official pipeline extracts answers with GPT after its
quick checks; that is optional here (``use_judge=True`` plus an API key, or ``judge_responses`` with
replies keyed by record id) and off by default. The headline metric says which it is:

- ``accuracy``: a judge is configured and every answer the quick checks left open got a judge reply.
- ``accuracy_rule_based``: otherwise (no judge, or some answers had no reply and were extracted by
  the rules of :mod:`mathvista_extract`); never comparable to the official, GPT-extracted number.

The breakdown is computed the same way in both cases; ``notes`` count the extraction methods.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dc.eval.benchmarks.base import (
    JUDGE_KEYS,
    Benchmark,
    EvalRecord,
    IdAllocator,
    Skip,
    build_result,
    first_existing,
    load_json,
    pct,
    with_image_token,
)
from dc.eval.benchmarks.judge import batch_line, collect_replies, make_judge
from dc.eval.benchmarks.mathvista_extract import normalize_extraction, quick_extract, rule_extract
from dc.eval.benchmarks.report import atomic_write_json

HINTS = {
    "multi_choice": "Hint: Please answer the question and provide the correct option letter, "
    "e.g., A, B, C, D, at the end.",
    "integer": "Hint: Please answer the question requiring an integer answer and provide the final value, "
    "e.g., 1, 2, 3, at the end.",
    "float1": "Hint: Please answer the question requiring a floating-point number with one decimal place and "
    "provide the final value, e.g., 1.2, 1.3, 1.4, at the end.",
    "float2": "Hint: Please answer the question requiring a floating-point number with two decimal places and "
    "provide the final value, e.g., 1.23, 1.34, 1.45, at the end.",
    "list": "Hint: Please answer the question requiring a Python list as an answer and provide the final list, "
    "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.",
}
_REQUIRED = ("question", "answer", "question_type", "answer_type")
_EXTRACT_INSTRUCTION = (
    "Extract the final answer from the model response below. Reply with the answer only: "
    "an option letter for multiple choice, a number for numeric questions, a Python list "
    "for list questions."
)


def build_query(problem: Mapping[str, Any]) -> str:
    """DC's zero-shot MathVista query (without the image token)."""
    if problem.get("question_type") == "multi_choice":
        hint = HINTS["multi_choice"]
    elif problem.get("answer_type") == "float":
        # DC only defines 1 and 2 decimals; other precisions fall back to the closer of the two.
        hint = HINTS["float1"] if int(problem.get("precision") or 1) <= 1 else HINTS["float2"]
    else:
        hint = HINTS.get(str(problem.get("answer_type")), HINTS["integer"])
    question = f"Question: {problem['question']}"
    if problem.get("unit"):
        question += f" (Unit: {problem['unit']})"
    parts = [hint, question]
    if problem.get("choices"):
        parts.append("\n".join(["Choices:"] + [f"({chr(65 + i)}) {c}" for i, c in enumerate(problem["choices"])]))
    return "\n".join(parts)


class MathVista(Benchmark):
    """MathVista testmini.

    Args:
        root: ``$DATA_ROOT/eval/mathvista``.
        data_file: Problems file relative to root (default: ``annot_testmini.json`` or ``testmini.json``).
        use_judge: Use a model to extract answers the quick checks do not settle (needs the API key).
        judge_model: Judge model name.
        judge_api_key_env: Environment variable holding the judge API key.
        judge_responses: File of judge replies (``{"custom_id": record id, "content"}`` lines); new live
            replies are appended to it.
        **kw: ``limit``, ``check_images``.
    """

    name = "mathvista"
    scoring_keys = JUDGE_KEYS
    prompt_suffix = None
    max_new_tokens = 1024

    def __init__(
        self,
        root: str | Path,
        *,
        data_file: str | None = None,
        use_judge: bool = False,
        judge_model: str = "gpt-4-0613",
        judge_api_key_env: str = "OPENAI_API_KEY",
        judge_responses: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        self.data_file = (
            self.root / data_file
            if data_file
            else first_existing(self.root / "annot_testmini.json", self.root / "testmini.json")
            or self.root / "annot_testmini.json"
        )
        self.judge_model = judge_model
        self.judge, self.judge_note = make_judge(use_judge, judge_model, judge_api_key_env)
        self.judge_responses = Path(judge_responses) if judge_responses else None

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        data = load_json(self.data_file)
        items = list(data.items()) if isinstance(data, dict) else [(str(i), p) for i, p in enumerate(data)]
        records, skips = [], []
        new_id = IdAllocator()
        for pid, p in items:
            pid = str(p.get("pid", pid)) if isinstance(p, dict) else str(pid)
            if not isinstance(p, dict) or not all(k in p for k in _REQUIRED):
                skips.append(Skip(pid, "missing_field", "question/answer/question_type/answer_type"))
                continue
            image = self._image(self.root, p["image"], pid, skips) if p.get("image") else None
            if p.get("image") and image is None:
                continue
            query = build_query(p)
            meta = {k: p.get(k) for k in ("question_type", "answer_type", "choices", "precision", "answer", "unit")}
            md = p.get("metadata") or {}
            meta.update(pid=pid, query=query, task=md.get("task"), skills=list(md.get("skills") or []))
            prompt = with_image_token(query) if image is not None else query
            records.append(EvalRecord(new_id(pid), prompt, image, self.max_new_tokens, meta))
        return records, skips

    def judge_requests(self, records: Sequence[EvalRecord], answers: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """Extraction requests for the answers the official quick checks do not settle."""
        out = {}
        for r in records:
            response = answers.get(r.id, "")
            if quick_extract(response, r.meta) is None:
                msg = f"{_EXTRACT_INSTRUCTION}\n\n{r.meta['query']}\n\nModel response: {response}\n\nExtracted answer:"
                out[r.id] = batch_line(
                    r.id, [{"role": "user", "content": msg}], model=self.judge_model, temperature=0.0, max_tokens=64
                )
        return out

    @staticmethod
    def _extract(record: EvalRecord, response: str, replies: Mapping[str, str]) -> tuple[str, str]:
        """``(extraction, method)``; method is ``quick``, ``judge`` or ``rule``."""
        quick = quick_extract(response, record.meta)
        if quick is not None:
            return quick, "quick"
        if record.id in replies:
            return replies[record.id].strip(), "judge"
        return rule_extract(response, record.meta), "rule"

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        skips = self._skips(skips)
        replies: dict[str, str] = {}
        if self.judge is not None or self.judge_responses is not None:
            replies = collect_replies(
                self.judge_requests(records, answers), judge=self.judge, responses_file=self.judge_responses
            )
        hits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        methods: dict[str, int] = defaultdict(int)
        for r in records:
            extraction, method = self._extract(r, answers.get(r.id, ""), replies)
            methods[method] += 1
            ok = int(normalize_extraction(extraction, r.meta) == str(r.meta["answer"]))
            hits["all"]["all"].append(ok)
            for g in ("question_type", "answer_type", "task"):
                if r.meta.get(g):
                    hits[g][r.meta[g]].append(ok)
            for skill in r.meta.get("skills") or []:
                hits["skill"][skill].append(ok)
        judged = (self.judge is not None or self.judge_responses is not None) and not methods.get("rule")
        metric = "accuracy" if judged else "accuracy_rule_based"
        notes = [f"answer extraction: {dict(methods)} (official numbers use GPT extraction)"]
        if not judged:
            notes.append(
                "headline metric is accuracy_rule_based: answers the quick checks left open were "
                "extracted by rules, not by the judge"
            )
        if self.judge_note:
            notes.append(self.judge_note)
        all_hits = hits.pop("all", {}).get("all", [])
        breakdown = {g: {k: pct(sum(v), len(v)) for k, v in sorted(d.items())} for g, d in hits.items()}
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics={metric: pct(sum(all_hits), len(all_hits))},
            main_metric=metric,
            breakdown=breakdown,
            notes=notes,
            options={"answer_extraction": "judge" if judged else "rule_based"},
        )

    def write_submission(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], out_dir: str | Path
    ) -> list[Path]:
        """``{pid: problem fields + query + response}``: the input of MathVista's official extract_answer.py."""
        out = {r.meta["pid"]: {**r.meta, "response": answers.get(r.id, "")} for r in records}
        return [atomic_write_json(Path(out_dir) / "mathvista_testmini_responses.json", out)]
