"""SEED-Bench: option-letter accuracy per question type, image / video / all (LLaVA convert_seed_for_submission).

Files under ``$DATA_ROOT/eval/seed``::

    llava-seed-bench.jsonl        {"question_id", "image", "text" (question + "A. ..." options + suffix), ...}
    SEED-Bench.json               official {"questions": [{question_id, answer, question_type_id, data_type}],
                                            "question_type": {name: id}}
    SEED-Bench-image/...          images; SEED-Bench-video-image/... (LLaVA's middle frames of videos)

Prompt: the question file text (options and ``Answer with the option's letter from the given choices
directly.`` already in it), ``<image>\\n`` in front; ``max_new_tokens = 128`` (as in the reference code).

Scoring (``scoring_rule``, recorded in the result's ``options``):

- ``"official"`` (default): LLaVA's ``convert_seed_for_submission``: correct iff the answer, as
  ``model_vqa_loader`` stores it (whitespace-trimmed), equals the answer letter exactly -- ``"A"``
  counts, ``"A."`` and ``"(A) a dog"`` do not.
- ``"letter"``: the letter is read from the answer with the lenient :func:`choices.extract_letter`
  (``"A."``, ``"(A) a dog"``, ``"The answer is A"`` count); same result for bare-letter answers.

Accuracy per question type, and over image / video / all.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dc.eval.benchmarks.base import (
    OPTION_LETTER_SUFFIX,
    SCORING_RULE_KEYS,
    Benchmark,
    EvalRecord,
    IdAllocator,
    Skip,
    build_result,
    load_json,
    pct,
    with_image_token,
    with_suffix,
)
from dc.eval.benchmarks.choices import extract_letter
from dc.eval.benchmarks.report import atomic_write_text

_LETTERS = ["A", "B", "C", "D"]
_DATA_TYPES = ("all", "image", "video")
SCORING_RULES = ("official", "letter")


class SEEDBench(Benchmark):
    """SEED-Bench (v1).

    Args:
        root: ``$DATA_ROOT/eval/seed``.
        question_file: LLaVA question file, relative to root.
        annotation_file: Official annotations, relative to root.
        image_folder: Image folder, relative to root.
        data_type: Keep ``"all"`` questions, or only ``"image"`` / ``"video"`` ones.
        scoring_rule: ``"official"`` (default) or ``"letter"``; see the module docstring.
        **kw: ``limit``, ``check_images``.
    """

    name = "seed"
    scoring_keys = SCORING_RULE_KEYS
    prompt_suffix = OPTION_LETTER_SUFFIX
    max_new_tokens = 128

    def __init__(
        self,
        root: str | Path,
        *,
        question_file: str = "llava-seed-bench.jsonl",
        annotation_file: str = "SEED-Bench.json",
        image_folder: str = ".",
        data_type: str = "all",
        scoring_rule: str = "official",
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        if data_type not in _DATA_TYPES:
            raise ValueError(f"seed.data_type must be one of {_DATA_TYPES}, got {data_type!r}")
        if scoring_rule not in SCORING_RULES:
            raise ValueError(f"seed.scoring_rule must be one of {SCORING_RULES}, got {scoring_rule!r}")
        self.scoring_rule = scoring_rule
        self.question_file = self.root / question_file
        self.annotation_file = self.root / annotation_file
        self.image_folder = self.root / image_folder
        self.data_type = data_type

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        gt: dict[str, dict[str, Any]] = {}
        type_names: dict[int, str] = {}
        if self.annotation_file.is_file():
            ann = load_json(self.annotation_file)
            gt = {str(q["question_id"]): q for q in ann.get("questions", [])}
            type_names = {int(v): k for k, v in ann.get("question_type", {}).items()}
        records, skips = [], []
        new_id = IdAllocator()
        for obj in self.question_lines(self.question_file, skips, ("question_id", "image", "text")):
            qid = str(obj["question_id"])
            q = gt.get(qid, {})
            if self.data_type != "all" and q.get("data_type") != self.data_type:
                continue
            image = self._image(self.image_folder, obj["image"], qid, skips)
            if image is None:
                continue
            tid = q.get("question_type_id")
            meta = {
                "question_id": obj["question_id"],
                "answer": q.get("answer"),
                "data_type": q.get("data_type"),
                "question_type": type_names.get(int(tid), str(tid)) if tid is not None else None,
            }
            records.append(
                EvalRecord(
                    new_id(qid),
                    with_image_token(with_suffix(obj["text"], self.prompt_suffix)),
                    image,
                    self.max_new_tokens,
                    meta,
                )
            )
        return records, skips

    def read_answer(self, answer: str) -> str | None:
        """What is compared with the answer letter under the configured rule (None: no letter found)."""
        if self.scoring_rule == "letter":
            return extract_letter(answer, _LETTERS)
        return answer.strip()

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        skips = self._skips(skips)
        skips += [Skip(r.id, "no_ground_truth") for r in records if not r.meta.get("answer")]
        hits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for r in records:
            if not r.meta.get("answer"):
                continue
            ok = int(self.read_answer(answers.get(r.id, "")) == r.meta["answer"])
            hits["data_type"]["all"].append(ok)
            hits["data_type"][r.meta.get("data_type") or "unknown"].append(ok)
            hits["question_type"][r.meta.get("question_type") or "unknown"].append(ok)
        if not hits:
            return self.no_ground_truth(records, answers, skips, "SEED-Bench.json not found")
        dt = hits["data_type"]
        metrics = {
            f"accuracy_{k}" if k != "all" else "accuracy": pct(sum(dt[k]), len(dt[k]))
            for k in ("all", "image", "video")
            if dt.get(k)
        }
        breakdown = {"question_type": {k: pct(sum(v), len(v)) for k, v in sorted(hits["question_type"].items())}}
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics=metrics,
            main_metric="accuracy",
            breakdown=breakdown,
            notes=[f"scoring rule: {self.scoring_rule}"],
            options={"scoring_rule": self.scoring_rule},
        )

    def write_submission(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], out_dir: str | Path
    ) -> list[Path]:
        """LLaVA's upload JSONL: ``{"question_id", "prediction"}`` per answered question."""
        lines = [
            json.dumps({"question_id": r.meta["question_id"], "prediction": answers[r.id]}, ensure_ascii=False)
            for r in records
            if r.id in answers
        ]
        return [atomic_write_text(Path(out_dir) / "seed_bench_upload.jsonl", "".join(x + "\n" for x in lines))]
