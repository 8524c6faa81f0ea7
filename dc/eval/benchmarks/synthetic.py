"""Held-out questions of the synthetic shapes task, with a blank-image control.

Files under the synthetic data folder (written by `dc.data.synthetic.generate`, by default
``$DATA_ROOT/synthetic/seed0_2000_4000_100``)::

    eval.jsonl      {"question_id", "image", "text", "answer", "category"}
    images/<name>.png

Prompt: ``<image>\\n{text}``; ``max_new_tokens = 8``. Score: exact match after lowercasing, trimming and
dropping a trailing full stop; accuracy overall and per category (colour, shape, position, count).

Control ``blank``: the same questions with a blank canvas instead of the scene. A model that really reads the
image drops to about chance (25 %), which shows the answers come through the visual path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dc.data.synthetic import IMAGE_SIZE, render
from dc.eval.benchmarks.base import Benchmark, EvalRecord, IdAllocator, Skip, build_result, pct


def normalize(answer: str) -> str:
    """Lowercase, trim, drop a trailing full stop."""
    return answer.strip().lower().rstrip(".").strip()


class SyntheticQA(Benchmark):
    """The synthetic task's held-out questions.

    Args:
        root: the synthetic data folder (holding `eval.jsonl` and `images/`).
        question_file: question file, relative to root.
        max_new_tokens: generation budget.
        blank_control: also evaluate every question on a blank canvas (metrics `blank_*`).
    """

    name = "synthetic"
    max_new_tokens = 8

    def __init__(
        self,
        root: str | Path,
        *,
        question_file: str = "eval.jsonl",
        max_new_tokens: int = 8,
        blank_control: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        self.question_file = self.root / question_file
        self.max_new_tokens = int(max_new_tokens)
        self.controls = ("blank",) if blank_control else ()

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        records: list[EvalRecord] = []
        skips: list[Skip] = []
        new_id = IdAllocator()
        for obj in self.question_lines(self.question_file, skips, ("question_id", "image", "text", "answer")):
            qid = new_id(obj["question_id"])
            image = self._image(self.root / "images", obj["image"], qid, skips)
            if image is None:
                continue
            meta = {"answer": obj["answer"], "category": obj.get("category", "all")}
            records.append(EvalRecord(qid, "<image>\n" + obj["text"], image, self.max_new_tokens, meta))
        return records, skips

    def control_records(self, control: str, records: Sequence[EvalRecord], out_dir: Path) -> list[EvalRecord]:
        """`blank`: every record with a blank canvas (written once into `out_dir`) instead of its image."""
        blank = out_dir / "blank.png"
        if not blank.exists():
            render([], IMAGE_SIZE).save(blank)
        return [EvalRecord(r.id, r.prompt, blank, r.max_new_tokens, r.meta) for r in records]

    def summary(self, result: Mapping[str, Any]) -> str:
        m = result["metrics"]
        n = result["counts"]["answered"]
        lines = [f"held-out accuracy: {m['accuracy']:.1f} %  ({n} questions; chance 25 %)"]
        if "blank_accuracy" in m:
            lines.append(
                f"blank-image accuracy: {m['blank_accuracy']:.1f} %  (same model, blank canvas instead of the scene)"
            )
        return "\n".join(lines)

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        hits: dict[str, list[bool]] = defaultdict(list)
        for rec in records:
            if rec.id not in answers:
                continue
            ok = normalize(answers[rec.id]) == normalize(rec.meta["answer"])
            hits[rec.meta["category"]].append(ok)
            hits["all"].append(ok)
        per_category = {k: pct(sum(v), len(v)) for k, v in sorted(hits.items()) if k != "all"}
        metrics = {"accuracy": pct(sum(hits["all"]), len(hits["all"]))}
        metrics.update({f"accuracy_{k}": v for k, v in per_category.items()})
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=self._skips(skips),
            metrics=metrics,
            main_metric="accuracy",
            notes=["chance: 25 % (colour, shape, count), 11 % (position)"],
        )
