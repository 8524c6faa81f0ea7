"""MM-Vet: official upload JSON plus GPT-grader request files; scored only when judge replies exist.

Files under ``$DATA_ROOT/eval/mmvet``::

    llava-mm-vet.jsonl     {"question_id": <n>, "image": "v1_<n>.png", "text": question}
    images/v1_<n>.png
    mm-vet.json            official {"v1_<n>": {"question", "answer", "capability": [...]}} (for grading)

Prompt: ``<image>\\n{question}`` -- no suffix; ``max_new_tokens = 1024`` (as in the reference code).

``write_submission`` writes ``mmvet_results.json`` (``{"v1_<n>": answer}``, what the official
evaluator takes) and, with ``mm-vet.json`` present, ``mmvet_judge_requests.jsonl`` (OpenAI Batch API
lines, the official few-shot grader prompt, gpt-4-0613, temperature 0, max_tokens 3).

Scoring needs the grader: replies come from ``judge_responses`` (Batch output) or a live judge
(``use_judge=True`` and the API key in ``$OPENAI_API_KEY``). The reply's first token is the 0-1
score; total = mean x 100, per capability = mean over the samples with that capability x 100.
Without replies the result has ``status="needs_judge"``.
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
    load_json,
    with_image_token,
)
from dc.eval.benchmarks.judge import batch_line, collect_replies, make_judge, write_requests
from dc.eval.benchmarks.report import atomic_write_json

# MM-Vet's official few-shot grader prompt, verbatim (one source line per chunk; "\n" ends a prompt line).
GRADER_PROMPT = (
    "Compare the ground truth and prediction from AI models, to give a correctness score for the "
    "prediction. <AND> in the ground truth means it is totally right only when all elements in the ground"
    " truth are present in the prediction, and <OR> means it is totally right when any one element in the"
    " ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, "
    "0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the "
    "correctness score.\n"
    "\n"
    "Question | Ground truth | Prediction | Correctness\n"
    "--- | --- | --- | ---\n"
    "What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0\n"
    "What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0\n"
    "Can you explain this meme? | This meme is poking fun at the fact that the names of the countries "
    "Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green "
    "landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person "
    "has trust issues because the names of these countries do not accurately represent their landscapes. "
    "| The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is"
    " not very icy and Greenland isn't very green. | 0.4\n"
    "Can you explain this meme? | This meme is poking fun at the fact that the names of the countries "
    "Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green "
    "landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person "
    "has trust issues because the names of these countries do not accurately represent their landscapes. "
    "| The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. "
    "Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and "
    "snow. The text 'This is why I have trust issues' is a playful way to suggest that these "
    "contradictions can lead to distrust or confusion. The humor in this meme is derived from the "
    "unexpected contrast between the names of the countries and their actual physical characteristics. | "
    "1.0\n"
)


def parse_grade(reply: str) -> float | None:
    """First space-separated token as a score in [0, 1], else None (the official script retries)."""
    try:
        score = float(reply.strip().split(" ")[0])
    except (ValueError, IndexError):
        return None
    return score if 0.0 <= score <= 1.0 else None


class MMVet(Benchmark):
    """MM-Vet.

    Args:
        root: ``$DATA_ROOT/eval/mmvet``.
        question_file: LLaVA question file, relative to root.
        image_folder: Image folder, relative to root.
        gt_file: Official ``mm-vet.json``, relative to root.
        use_judge: Call the grader live (needs the API key).
        judge_model: Grader model.
        judge_api_key_env: Environment variable with the API key.
        judge_responses: Batch-output (or ``{"custom_id", "content"}``) file with grader replies.
        **kw: ``limit``, ``check_images``.
    """

    name = "mmvet"
    scoring_keys = JUDGE_KEYS
    prompt_suffix = None
    max_new_tokens = 1024

    def __init__(
        self,
        root: str | Path,
        *,
        question_file: str = "llava-mm-vet.jsonl",
        image_folder: str = "images",
        gt_file: str = "mm-vet.json",
        use_judge: bool = False,
        judge_model: str = "gpt-4-0613",
        judge_api_key_env: str = "OPENAI_API_KEY",
        judge_responses: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        self.question_file = self.root / question_file
        self.image_folder = self.root / image_folder
        self.gt_file = self.root / gt_file
        self.judge_model = judge_model
        self.judge, self.judge_note = make_judge(use_judge, judge_model, judge_api_key_env)
        self.judge_responses = judge_responses

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        gt: dict[str, Any] = load_json(self.gt_file) if self.gt_file.is_file() else {}
        records, skips = [], []
        new_id = IdAllocator()
        for obj in self.question_lines(self.question_file, skips, ("question_id", "image", "text")):
            key = f"v1_{obj['question_id']}"
            image = self._image(self.image_folder, obj["image"], key, skips)
            if image is None:
                continue
            g = gt.get(key, {})
            meta = {
                "key": key,
                "question": g.get("question", obj["text"]),
                "answer": g.get("answer"),
                "capability": list(g.get("capability", [])),
            }
            records.append(
                EvalRecord(new_id(key), with_image_token(obj["text"].strip()), image, self.max_new_tokens, meta)
            )
        return records, skips

    def judge_requests(self, records: Sequence[EvalRecord], answers: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """Grader requests keyed by record id (records with ground truth and an answer only)."""
        out = {}
        for r in records:
            if r.meta.get("answer") is None or r.id not in answers:
                continue
            gt = r.meta["answer"].replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
            content = GRADER_PROMPT + "\n" + " | ".join([r.meta["question"], gt, answers[r.id], ""])
            out[r.id] = batch_line(
                r.id, [{"role": "user", "content": content}], model=self.judge_model, temperature=0.0, max_tokens=3
            )
        return out

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        skips = self._skips(skips)
        requests = self.judge_requests(records, answers)
        replies = collect_replies(requests, judge=self.judge, responses_file=self.judge_responses)
        grades = {rid: parse_grade(replies[rid]) for rid in requests if rid in replies}
        graded = {rid: g for rid, g in grades.items() if g is not None}
        notes = [self.judge_note] if self.judge_note else []
        if not graded:
            notes.append(
                "scoring needs the GPT grader: run mmvet_judge_requests.jsonl (write_submission) and pass "
                "the output as judge_responses, or set use_judge=True with the API key; or upload "
                "mmvet_results.json to the official evaluator"
            )
            return self.unscored(records, answers, skips, "needs_judge", notes)
        skips += [Skip(rid, "judge_unparsable") for rid, g in grades.items() if g is None]
        caps: dict[str, list[float]] = defaultdict(list)
        by_id = {r.id: r for r in records}
        for rid, g in graded.items():
            for c in by_id[rid].meta["capability"]:
                caps[c].append(g)
        if len(graded) < len(requests):
            notes.append(f"only {len(graded)} of {len(requests)} answers have a grade")
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics={"total": 100.0 * sum(graded.values()) / len(graded)},
            main_metric="total",
            breakdown={"capability": {c: 100.0 * sum(v) / len(v) for c, v in sorted(caps.items())}},
            notes=notes,
        )

    def write_submission(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], out_dir: str | Path
    ) -> list[Path]:
        """``mmvet_results.json`` and, with ground truth, ``mmvet_judge_requests.jsonl``."""
        out = Path(out_dir)
        paths = [
            atomic_write_json(
                out / "mmvet_results.json", {r.meta["key"]: answers[r.id] for r in records if r.id in answers}
            )
        ]
        requests = self.judge_requests(records, answers)
        if requests:
            paths.append(write_requests(out / "mmvet_judge_requests.jsonl", requests.values()))
        return paths
