"""POPE (COCO random / popular / adversarial): yes/no hallucination metrics (LLaVA eval_pope rules).

Files under ``$DATA_ROOT/eval/pope``::

    llava_pope_test.jsonl                {"question_id", "image", "text", "category": split}
    val2014/COCO_val2014_<id>.jpg        COCO val2014 images
    coco/coco_pope_{random,popular,adversarial}.json   JSONL labels {"image", "text", "label": yes|no}

Prompt: ``<image>\\n{question}\\nAnswer the question using a single word or phrase.``;
``max_new_tokens = 128`` (as in the reference code).

Scoring (per split, "yes" is the positive class): keep the text before the first ``.``, drop commas,
split on spaces; the answer is "no" if a word is ``No``, ``no`` or ``not``, else "yes". Reports
accuracy, precision, recall, F1 and yes-ratio (x100) per split and their mean over splits (papers
quote the mean F1 / accuracy). Labels are matched by ``(image, question)``, falling back to the
position within the split (LLaVA's eval zips the two files in order). Unanswered questions are left
out of the confusion matrix (they cannot be a yes or a no) and counted as missing.
"""

from __future__ import annotations

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
    pct,
    read_jsonl,
    with_image_token,
    with_suffix,
)

SPLITS = ("adversarial", "popular", "random")


def pope_yes_no(text: str) -> str:
    """LLaVA's POPE answer rule: first sentence, commas removed, 'no' if No/no/not else 'yes'."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def pope_metrics(preds: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Confusion-matrix metrics with 'yes' positive; rates are percentages, counts are raw."""
    tp = sum(p == "yes" and g == "yes" for p, g in zip(preds, labels))
    fp = sum(p == "yes" and g == "no" for p, g in zip(preds, labels))
    tn = sum(p == "no" and g == "no" for p, g in zip(preds, labels))
    fn = sum(p == "no" and g == "yes" for p, g in zip(preds, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(preds)
    return {
        "accuracy": pct(tp + tn, n),
        "precision": 100 * precision,
        "recall": 100 * recall,
        "f1": 100 * f1,
        "yes_ratio": pct(tp + fp, n),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": n,
    }


class POPE(Benchmark):
    """POPE on COCO.

    Args:
        root: ``$DATA_ROOT/eval/pope``.
        question_file: LLaVA question file, relative to root.
        image_folder: Image folder, relative to root.
        annotation_dir: Folder with ``coco_pope_<split>.json`` label files, relative to root.
        splits: Splits to keep.
        **kw: ``limit``, ``check_images``.
    """

    name = "pope"
    prompt_suffix = SHORT_ANSWER_SUFFIX
    max_new_tokens = 128

    def __init__(
        self,
        root: str | Path,
        *,
        question_file: str = "llava_pope_test.jsonl",
        image_folder: str = "val2014",
        annotation_dir: str = "coco",
        splits: Sequence[str] = SPLITS,
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        bad = sorted(set(splits) - set(SPLITS))
        if bad:
            raise ValueError(f"pope.splits: unknown {bad}; allowed {list(SPLITS)}")
        self.splits = tuple(splits)
        self.question_file = self.root / question_file
        self.image_folder = self.root / image_folder
        self.annotation_dir = self.root / annotation_dir

    def _labels(self, split: str) -> tuple[dict[tuple[str, str], str], list[str]]:
        path = self.annotation_dir / f"coco_pope_{split}.json"
        by_key: dict[tuple[str, str], str] = {}
        in_order: list[str] = []
        if path.is_file():
            for _, obj, _ in read_jsonl(path):
                if obj and "label" in obj:
                    by_key[(str(obj.get("image")), str(obj.get("text", "")).strip())] = obj["label"]
                    in_order.append(obj["label"])
        return by_key, in_order

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        labels = {s: self._labels(s) for s in self.splits}
        position = dict.fromkeys(self.splits, 0)
        records, skips = [], []
        new_id = IdAllocator()
        for obj in self.question_lines(self.question_file, skips, ("question_id", "image", "text", "category")):
            split = obj["category"]
            if split not in self.splits:
                continue
            qid = str(obj["question_id"])
            # Position within the split counts every question, even ones skipped below.
            pos = position[split]
            position[split] += 1
            image = self._image(self.image_folder, obj["image"], qid, skips)
            if image is None:
                continue
            question = obj["text"].split("\n")[0].strip()
            by_key, in_order = labels[split]
            label = by_key.get((obj["image"], question))
            if label is None and pos < len(in_order):
                label = in_order[pos]
            meta = {"question_id": obj["question_id"], "split": split, "label": label}
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
        skips += [Skip(r.id, "no_ground_truth") for r in records if r.meta.get("label") not in ("yes", "no")]
        breakdown: dict[str, Any] = {}
        for split in self.splits:
            rs = [
                r
                for r in records
                if r.meta["split"] == split and r.meta.get("label") in ("yes", "no") and r.id in answers
            ]
            if rs:
                breakdown[split] = pope_metrics([pope_yes_no(answers[r.id]) for r in rs], [r.meta["label"] for r in rs])
        if not breakdown:
            return self.no_ground_truth(
                records, answers, skips, "no labelled, answered questions (coco/coco_pope_*.json missing?)"
            )
        keys = ("f1", "accuracy", "precision", "recall", "yes_ratio")
        metrics = {k: sum(b[k] for b in breakdown.values()) / len(breakdown) for k in keys}
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics=metrics,
            main_metric="f1",
            breakdown={"split": breakdown},
            notes=[f"metrics are the mean over splits {sorted(breakdown)}"],
        )
