"""GQA testdev-balanced: exact-match accuracy (LLaVA convert_gqa_for_eval + official GQA eval.py).

Files under ``$DATA_ROOT/eval/gqa`` (LLaVA's eval.zip layout)::

    llava_gqa_testdev_balanced.jsonl           question file: {"question_id", "image", "text", ...}
    data/images/<imageId>.jpg                  GQA images
    data/testdev_balanced_questions.json       official questions with answers (also accepted at root)

Prompt: ``<image>\\n{question}\\nAnswer the question using a single word or phrase.`` (the suffix is
already in the question file); ``max_new_tokens = 128`` (as in the reference code).

Scoring: prediction = raw text with trailing ``.`` stripped and lower-cased (whitespace trimmed);
correct iff it equals the official ``answer``. Reports accuracy plus per structural / semantic type.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dc.eval.benchmarks.base import (
    SHORT_ANSWER_SUFFIX,
    Benchmark,
    EvalRecord,
    IdAllocator,
    Skip,
    build_result,
    first_existing,
    load_json,
    pct,
    with_image_token,
    with_suffix,
)
from dc.eval.benchmarks.report import atomic_write_json


def clean_gqa_prediction(text: str) -> str:
    """LLaVA's conversion: strip whitespace and trailing periods, lower-case."""
    return text.strip().rstrip(".").lower()


class GQA(Benchmark):
    """GQA testdev-balanced.

    Args:
        root: ``$DATA_ROOT/eval/gqa``.
        question_file: LLaVA question file, relative to root.
        image_folder: Image folder, relative to root.
        questions_json: Official questions file; default searches ``data/`` then root.
        **kw: ``limit``, ``check_images`` (see :class:`Benchmark`).
    """

    name = "gqa"
    prompt_suffix = SHORT_ANSWER_SUFFIX
    max_new_tokens = 128

    def __init__(
        self,
        root: str | Path,
        *,
        question_file: str = "llava_gqa_testdev_balanced.jsonl",
        image_folder: str = "data/images",
        questions_json: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        self.question_file = self.root / question_file
        self.image_folder = self.root / image_folder
        self.questions_json = (
            self.root / questions_json
            if questions_json
            else first_existing(
                self.root / "data" / "testdev_balanced_questions.json", self.root / "testdev_balanced_questions.json"
            )
        )

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        gt: dict[str, Any] = load_json(self.questions_json) if self.questions_json else {}
        records: list[EvalRecord] = []
        skips: list[Skip] = []
        new_id = IdAllocator()
        for obj in self.question_lines(self.question_file, skips, ("question_id", "image", "text")):
            qid = str(obj["question_id"])
            image = self._image(self.image_folder, obj["image"], qid, skips)
            if image is None:
                continue
            meta: dict[str, Any] = {"question_id": qid}
            if qid in gt:
                q = gt[qid]
                types = q.get("types", {})
                meta.update(answer=q.get("answer"), structural=types.get("structural"), semantic=types.get("semantic"))
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

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        skips = self._skips(skips)
        scored = [r for r in records if r.meta.get("answer") is not None]
        skips += [Skip(r.id, "no_ground_truth") for r in records if r.meta.get("answer") is None]
        if not scored:
            return self.no_ground_truth(
                records, answers, skips, "testdev_balanced_questions.json not found or no question matched"
            )
        groups: dict[str, dict[str, list[int]]] = {"structural": defaultdict(list), "semantic": defaultdict(list)}
        hits = []
        for r in scored:
            ok = int(clean_gqa_prediction(answers.get(r.id, "")) == r.meta["answer"])
            hits.append(ok)
            for g in groups:
                if r.meta.get(g):
                    groups[g][r.meta[g]].append(ok)
        breakdown = {g: {k: pct(sum(v), len(v)) for k, v in sorted(d.items())} for g, d in groups.items()}
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics={"accuracy": pct(sum(hits), len(hits))},
            main_metric="accuracy",
            breakdown=breakdown,
        )

    def write_submission(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], out_dir: str | Path
    ) -> list[Path]:
        """``testdev_balanced_predictions.json`` for the official GQA ``eval.py``."""
        preds = [
            {"questionId": r.meta["question_id"], "prediction": clean_gqa_prediction(answers.get(r.id, ""))}
            for r in records
        ]
        return [atomic_write_json(Path(out_dir) / "testdev_balanced_predictions.json", preds)]
