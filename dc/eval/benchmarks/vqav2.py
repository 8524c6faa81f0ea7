"""VQAv2: EvalAI submission JSON (test-dev) and local VQA accuracy when annotations are present.

Files under ``$DATA_ROOT/eval/vqav2``::

    llava_vqav2_mscoco_test-dev2015.jsonl     LLaVA question file (split="test-dev", the default)
    llava_vqav2_mscoco_test2015.jsonl         full test question list (submission is padded to it)
    test2015/COCO_test2015_<id>.jpg           images for test-dev
    v2_OpenEnded_mscoco_val2014_questions.json  \\  split="val": records are built from these two
    v2_mscoco_val2014_annotations.json          /  official files, images from val2014/

Prompt: ``<image>\\n{question}\\nAnswer the question using a single word or phrase.``;
``max_new_tokens = 128`` (as in the reference code).

Scoring (``scoring_rule``, recorded in the result's ``options``):

- ``"official"`` (default): what LLaVA's ``convert_vqav2_for_submission`` + the official ``vqaEval.py``
  compute (:func:`vqa_eval.vqav2_accuracy`): the prediction goes through the EvalAI answer processor;
  the human answers are only trimmed, and only when they are not all identical are both sides
  processed again with the evaluator's punctuation and digit/article steps (no possessive split on the
  human side). So ten identical human answers ``"t-shirt"`` never match a prediction ``"t-shirt"``
  (the converter made it ``"t shirt"``), exactly as on EvalAI.
- ``"m4c"``: both sides through the full EvalAI processor (TextVQA's m4c rule, and what this module
  did before); more lenient, not the official number.

Accuracy is the leave-one-out VQA accuracy over the 10 human answers, reported overall and per
``answer_type``. Test-dev has no public answers: ``score`` then reports ``no_ground_truth`` and
``write_submission`` produces the EvalAI upload file ``[{"question_id": int, "answer": str}]`` (answers
EvalAI-processed, as LLaVA's converter writes them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dc.eval.benchmarks.base import (
    SCORING_RULE_KEYS,
    SHORT_ANSWER_SUFFIX,
    Benchmark,
    EvalRecord,
    IdAllocator,
    Skip,
    build_result,
    load_json,
    pct,
    read_jsonl,
    with_image_token,
    with_suffix,
)
from dc.eval.benchmarks.report import atomic_write_json
from dc.eval.benchmarks.vqa_eval import normalize_answer, vqa_accuracy, vqav2_accuracy

_SPLITS = ("test-dev", "val")
SCORING_RULES = {"official": vqav2_accuracy, "m4c": vqa_accuracy}


class VQAv2(Benchmark):
    """VQAv2 test-dev (submission) or val (local scoring).

    Args:
        root: ``$DATA_ROOT/eval/vqav2``.
        split: ``"test-dev"`` (LLaVA question file) or ``"val"`` (official question json).
        question_file: LLaVA question file for test-dev, relative to root.
        full_test_file: Full test-2015 LLaVA file used to pad the submission (skipped if absent).
        image_folder: Image folder relative to root (default ``test2015`` / ``val2014`` by split).
        questions_json: Official questions json (val), relative to root.
        annotation_file: Official annotations json, relative to root; enables local scoring.
        scoring_rule: ``"official"`` (default) or ``"m4c"``; see the module docstring.
        **kw: ``limit``, ``check_images``.
    """

    name = "vqav2"
    scoring_keys = SCORING_RULE_KEYS
    prompt_suffix = SHORT_ANSWER_SUFFIX
    max_new_tokens = 128

    def __init__(
        self,
        root: str | Path,
        *,
        split: str = "test-dev",
        question_file: str = "llava_vqav2_mscoco_test-dev2015.jsonl",
        full_test_file: str = "llava_vqav2_mscoco_test2015.jsonl",
        image_folder: str | None = None,
        questions_json: str = "v2_OpenEnded_mscoco_val2014_questions.json",
        annotation_file: str = "v2_mscoco_val2014_annotations.json",
        scoring_rule: str = "official",
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        if split not in _SPLITS:
            raise ValueError(f"vqav2.split must be one of {_SPLITS}, got {split!r}")
        if scoring_rule not in SCORING_RULES:
            raise ValueError(f"vqav2.scoring_rule must be one of {sorted(SCORING_RULES)}, got {scoring_rule!r}")
        self.scoring_rule = scoring_rule
        self.split = split
        self.question_file = self.root / question_file
        self.full_test_file = self.root / full_test_file
        self.image_folder = self.root / (image_folder or ("test2015" if split == "test-dev" else "val2014"))
        self.questions_json = self.root / questions_json
        self.annotation_file = self.root / annotation_file

    def _annotations(self) -> dict[str, dict[str, Any]]:
        if not self.annotation_file.is_file():
            return {}
        anns = load_json(self.annotation_file)["annotations"]
        return {str(a["question_id"]): a for a in anns}

    def _items(self, skips: list[Skip]) -> list[tuple[str, Any, str, str]]:
        """``(id, original question_id, image relpath, question text)`` for the split."""
        items = []
        if self.split == "val":
            for q in load_json(self.questions_json)["questions"]:
                rel = f"COCO_val2014_{int(q['image_id']):012d}.jpg"
                items.append((str(q["question_id"]), q["question_id"], rel, q["question"]))
            return items
        for line_no, obj, err in read_jsonl(self.question_file):
            if obj is None:
                skips.append(Skip(f"line:{line_no}", "malformed_line", err))
            elif not all(k in obj for k in ("question_id", "image", "text")):
                skips.append(Skip(str(obj.get("question_id", f"line:{line_no}")), "missing_field"))
            else:
                items.append((str(obj["question_id"]), obj["question_id"], obj["image"], obj["text"]))
        return items

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        skips: list[Skip] = []
        anns = self._annotations()
        new_id = IdAllocator()
        records = []
        for qid, orig_qid, rel, text in self._items(skips):
            image = self._image(self.image_folder, rel, qid, skips)
            if image is None:
                continue
            meta: dict[str, Any] = {"question_id": orig_qid}
            if qid in anns:
                meta["answers"] = [a["answer"] for a in anns[qid]["answers"]]
                meta["answer_type"] = anns[qid].get("answer_type")
            prompt = with_image_token(with_suffix(text, self.prompt_suffix))
            records.append(EvalRecord(new_id(qid), prompt, image, self.max_new_tokens, meta))
        return records, skips

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        skips = self._skips(skips)
        scored = [r for r in records if r.meta.get("answers")]
        if not scored:
            return self.no_ground_truth(
                records,
                answers,
                skips,
                "no annotations for these questions (test-dev is scored by EvalAI): "
                "use write_submission and upload the JSON",
            )
        skips += [Skip(r.id, "no_ground_truth") for r in records if not r.meta.get("answers")]
        by_type: dict[str, list[float]] = defaultdict(list)
        accs = []
        accuracy = SCORING_RULES[self.scoring_rule]
        for r in scored:
            acc = accuracy(answers.get(r.id, ""), r.meta["answers"])
            accs.append(acc)
            by_type[r.meta.get("answer_type") or "unknown"].append(acc)
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics={"accuracy": pct(sum(accs), len(accs))},
            main_metric="accuracy",
            breakdown={"answer_type": {k: pct(sum(v), len(v)) for k, v in sorted(by_type.items())}},
            notes=[f"scoring rule: {self.scoring_rule}"],
            options={"scoring_rule": self.scoring_rule},
        )

    def write_submission(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], out_dir: str | Path
    ) -> list[Path]:
        """EvalAI JSON; for test-dev padded with ``""`` to every test-2015 question (as LLaVA does)."""
        preds: dict[Any, str] = {
            r.meta["question_id"]: normalize_answer(answers[r.id]) for r in records if r.id in answers
        }
        order: list[Any] = [r.meta["question_id"] for r in records]
        if self.split == "test-dev" and self.full_test_file.is_file():
            order = [
                obj["question_id"] for _, obj, _ in read_jsonl(self.full_test_file) if obj and "question_id" in obj
            ]
        sub = [{"question_id": _as_int(q), "answer": preds.get(q, "")} for q in order]
        return [atomic_write_json(Path(out_dir) / f"vqav2_{self.split}_submission.json", sub)]


def _as_int(qid: Any) -> Any:
    """EvalAI wants integer question ids."""
    try:
        return int(qid)
    except (TypeError, ValueError):
        return qid
