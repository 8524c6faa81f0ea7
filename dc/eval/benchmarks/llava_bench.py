"""LLaVA-Bench (in-the-wild): GPT-4 judge request files; relative score when judge replies exist.

Files under ``$DATA_ROOT/eval/llava_bench``::

    questions.jsonl        {"question_id", "image", "text", "category": conv|detail|complex}
    context.jsonl          {"image", "caption"}          (judge context)
    answers_gpt4.jsonl     {"question_id", "text"}       (reference answers, "Assistant 1")
    images/<image>

Prompt: ``<image>\\n{question}`` -- no suffix; ``max_new_tokens = 1024`` (as in the reference code).

Judging (LLaVA ``eval_gpt_review_bench``): one request per question with the caption, the question,
the GPT-4 reference as Assistant 1 and our answer as Assistant 2, plus the ``llava_bench_<category>``
rule (gpt-4-0314, temperature 0.2). The reply's first line holds the two 1-10 scores. Relative score
(``summarize_gpt_review``) = mean(ours) / mean(reference) x 100, per category and over all.
Unparsable replies are left out and counted (LLaVA averaged them in as ``-1``); ``"7, 7"`` is read
as two scores (LLaVA's single-space split rejected it).
"""

from __future__ import annotations

import json
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
    load_json,
    read_jsonl,
    with_image_token,
)
from dc.eval.benchmarks.judge import batch_line, collect_replies, make_judge, write_requests
from dc.eval.benchmarks.report import atomic_write_text

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
# LLaVA's rule.json uses the same text for llava_bench_conv / _detail / _complex.
RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the visual "
    "content in the image is represented with a few sentences describing the image. \nPlease rate the "
    "helpfulness, relevance, accuracy, level of details of their responses. Each assistant receives an overall "
    "score on a scale of 1 to 10, where a higher score indicates better overall performance.\nPlease first "
    "output a single line containing only two values indicating the scores for Assistant 1 and 2, respectively. "
    "The two scores are separated by a space.\nIn the subsequent line, please provide a comprehensive "
    "explanation of your evaluation, avoiding any potential bias and ensuring that the order in which the "
    "responses were presented does not affect your judgment."
)


def parse_review(reply: str) -> tuple[float, float] | None:
    """First line, commas as spaces, exactly two numbers -> (reference, ours).

    LLaVA splits on single spaces, so ``"7, 7"`` becomes three parts and fails there; splitting on any
    whitespace accepts it (the intended reading).
    """
    parts = reply.split("\n")[0].replace(",", " ").split()
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


class LLaVABench(Benchmark):
    """LLaVA-Bench in-the-wild.

    Args:
        root: ``$DATA_ROOT/eval/llava_bench``.
        question_file / context_file / reference_file: Files relative to root.
        image_folder: Image folder, relative to root.
        rule_file: Optional LLaVA ``rule.json`` to override the built-in rule text.
        use_judge / judge_model / judge_api_key_env / judge_responses: See :mod:`judge`.
        **kw: ``limit``, ``check_images``.
    """

    name = "llava_bench"
    scoring_keys = JUDGE_KEYS
    prompt_suffix = None
    max_new_tokens = 1024

    def __init__(
        self,
        root: str | Path,
        *,
        question_file: str = "questions.jsonl",
        context_file: str = "context.jsonl",
        reference_file: str = "answers_gpt4.jsonl",
        image_folder: str = "images",
        rule_file: str | None = None,
        use_judge: bool = False,
        judge_model: str = "gpt-4-0314",
        judge_api_key_env: str = "OPENAI_API_KEY",
        judge_responses: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        self.question_file = self.root / question_file
        self.context_file = self.root / context_file
        self.reference_file = self.root / reference_file
        self.image_folder = self.root / image_folder
        self.rules: dict[str, Any] = load_json(Path(rule_file)) if rule_file else {}
        self.judge_model = judge_model
        self.judge, self.judge_note = make_judge(use_judge, judge_model, judge_api_key_env)
        self.judge_responses = judge_responses

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        def table(path: Path, key: str) -> dict[str, dict[str, Any]]:
            return {str(o[key]): o for _, o, _ in read_jsonl(path) if o and key in o} if path.is_file() else {}

        captions, refs = table(self.context_file, "image"), table(self.reference_file, "question_id")
        records, skips = [], []
        new_id = IdAllocator()
        for obj in self.question_lines(self.question_file, skips, ("question_id", "image", "text")):
            qid = str(obj["question_id"])
            image = self._image(self.image_folder, obj["image"], qid, skips)
            if image is None:
                continue
            cap = captions.get(obj["image"], {}).get("caption")
            meta = {
                "question_id": obj["question_id"],
                "question": obj["text"],
                "category": obj.get("category", "conv"),
                # A list caption is joined by lines; a string is used as is.
                "caption": "\n".join(cap) if isinstance(cap, list) else cap,
                "reference": refs.get(qid, {}).get("text"),
            }
            records.append(
                EvalRecord(new_id(qid), with_image_token(obj["text"].strip()), image, self.max_new_tokens, meta)
            )
        return records, skips

    def judge_requests(self, records: Sequence[EvalRecord], answers: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """Judge requests keyed by record id (records with caption, reference and an answer only)."""
        out = {}
        for r in records:
            m = r.meta
            if m.get("caption") is None or m.get("reference") is None or r.id not in answers:
                continue
            rule = self.rules.get(f"llava_bench_{m['category']}", {"role": "Assistant", "prompt": RULE})
            role = rule["role"]
            content = (
                f"[Context]\n{m['caption']}\n\n[Question]\n{m['question']}\n\n"
                f"[{role} 1]\n{m['reference']}\n\n[End of {role} 1]\n\n"
                f"[{role} 2]\n{answers[r.id]}\n\n[End of {role} 2]\n\n[System]\n{rule['prompt']}\n\n"
            )
            out[r.id] = batch_line(
                r.id,
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}],
                model=self.judge_model,
                temperature=0.2,
                max_tokens=1024,
            )
        return out

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        skips = self._skips(skips)
        requests = self.judge_requests(records, answers)
        replies = collect_replies(requests, judge=self.judge, responses_file=self.judge_responses)
        reviews = {rid: parse_review(replies[rid]) for rid in requests if rid in replies}
        notes = [self.judge_note] if self.judge_note else []
        pairs = {rid: p for rid, p in reviews.items() if p is not None}
        if not pairs:
            notes.append(
                "scoring needs the GPT-4 judge: run llava_bench_judge_requests.jsonl (write_submission) and "
                "pass the output as judge_responses, or set use_judge=True with the API key"
            )
            return self.unscored(records, answers, skips, "needs_judge", notes)
        skips += [Skip(rid, "judge_unparsable") for rid, p in reviews.items() if p is None]
        by_id = {r.id: r for r in records}
        groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for rid, p in pairs.items():
            groups["all"].append(p)
            groups[by_id[rid].meta["category"]].append(p)

        def relative(ps: list[tuple[float, float]]) -> float:
            ref = sum(p[0] for p in ps) / len(ps)
            return 100.0 * (sum(p[1] for p in ps) / len(ps)) / ref if ref else 0.0

        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics={"relative_score": relative(groups.pop("all"))},
            main_metric="relative_score",
            breakdown={"category": {k: relative(v) for k, v in sorted(groups.items())}},
            notes=notes,
        )

    def write_submission(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], out_dir: str | Path
    ) -> list[Path]:
        """LLaVA-format answer file and ``llava_bench_judge_requests.jsonl``."""
        out = Path(out_dir)
        rows = [
            {"question_id": r.meta["question_id"], "prompt": r.meta["question"], "text": answers[r.id]}
            for r in records
            if r.id in answers
        ]
        ans = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        paths = [atomic_write_text(out / "llava_bench_answers.jsonl", ans)]
        requests = self.judge_requests(records, answers)
        if requests:
            paths.append(write_requests(out / "llava_bench_judge_requests.jsonl", requests.values()))
        return paths
