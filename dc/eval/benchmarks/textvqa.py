"""TextVQA val: VQA accuracy with LLaVA's OCR-token prompt (m4c evaluator rules).

Files under ``$DATA_ROOT/eval/textvqa``::

    llava_textvqa_val_v051_ocr.jsonl   {"question_id": <image id>, "image", "text", ...}; text is
                                       "{question}\\nReference OCR token: {tokens}\\n{suffix}"
    train_images/<image_id>.jpg        TextVQA images (val questions use train_images)
    TextVQA_0.5.1_val.json             official annotations {"data": [{image_id, question, answers}]}

Prompt: ``<image>\\n{question}\\nReference OCR token: ...\\nAnswer the question using a single word or
phrase.``; ``max_new_tokens = 128`` (as in the reference code). The paper numbers use the OCR tokens
(as lmms-eval and LLaVA do); ``ocr=False`` removes the ``Reference OCR token:`` line from the prompt (or
point ``question_file`` at a file without it).

Scoring: LLaVA's question file keys questions by *image* id, so ground truth is matched on
``(image_id, question.lower())`` as LLaVA's ``eval_textvqa.py`` does; accuracy is the leave-one-out
VQA accuracy of LLaVA's ``m4c_evaluator.TextVQAAccuracyEvaluator``: prediction and human answers both
go through the EvalAI answer processor (:func:`vqa_eval.normalize_answer`: the official contraction
table as published, at most 32 periods stripped -- the official quirks, see :mod:`vqa_eval`).
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
    load_json,
    pct,
    with_image_token,
    with_suffix,
)
from dc.eval.benchmarks.vqa_eval import vqa_accuracy

OCR_PREFIX = "Reference OCR token:"


def split_textvqa_prompt(text: str) -> tuple[str, str | None]:
    """Split a LLaVA TextVQA prompt into ``(question, ocr_line or None)``; the suffix is dropped."""
    lines = [ln for ln in text.split("\n") if ln.strip() and ln.strip() != SHORT_ANSWER_SUFFIX]
    ocr = next((ln for ln in lines if ln.startswith(OCR_PREFIX)), None)
    question = next((ln for ln in lines if not ln.startswith(OCR_PREFIX)), "")
    return question.strip(), ocr


class TextVQA(Benchmark):
    """TextVQA validation.

    Args:
        root: ``$DATA_ROOT/eval/textvqa``.
        ocr: Keep the ``Reference OCR token:`` line (LLaVA/paper setting).
        question_file: LLaVA question file, relative to root.
        image_folder: Image folder, relative to root.
        annotation_file: Official annotations, relative to root.
        **kw: ``limit``, ``check_images``.
    """

    name = "textvqa"
    prompt_suffix = SHORT_ANSWER_SUFFIX
    max_new_tokens = 128

    def __init__(
        self,
        root: str | Path,
        *,
        ocr: bool = True,
        question_file: str = "llava_textvqa_val_v051_ocr.jsonl",
        image_folder: str = "train_images",
        annotation_file: str = "TextVQA_0.5.1_val.json",
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        self.ocr = ocr
        self.question_file = self.root / question_file
        self.image_folder = self.root / image_folder
        self.annotation_file = self.root / annotation_file

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        gt: dict[tuple[str, str], dict[str, Any]] = {}
        if self.annotation_file.is_file():
            for a in load_json(self.annotation_file)["data"]:
                gt[(str(a["image_id"]), a["question"].lower())] = a
        records, skips = [], []
        new_id = IdAllocator()
        for obj in self.question_lines(self.question_file, skips, ("question_id", "image", "text")):
            image_id = str(obj["question_id"])
            rid = new_id(image_id)
            image = self._image(self.image_folder, obj["image"], rid, skips)
            if image is None:
                continue
            question, ocr_line = split_textvqa_prompt(obj["text"])
            body = question if not (self.ocr and ocr_line) else f"{question}\n{ocr_line}"
            meta: dict[str, Any] = {"image_id": image_id, "question": question}
            ann = gt.get((image_id, question.lower()))
            if ann is not None:
                meta.update(answers=list(ann["answers"]), textvqa_question_id=ann.get("question_id"))
            records.append(
                EvalRecord(
                    rid, with_image_token(with_suffix(body, self.prompt_suffix)), image, self.max_new_tokens, meta
                )
            )
        return records, skips

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        skips = self._skips(skips)
        scored = [r for r in records if r.meta.get("answers")]
        skips += [Skip(r.id, "no_ground_truth") for r in records if not r.meta.get("answers")]
        if not scored:
            return self.no_ground_truth(
                records, answers, skips, f"no annotation matched ({self.annotation_file.name} missing?)"
            )
        accs = [vqa_accuracy(answers.get(r.id, ""), r.meta["answers"]) for r in scored]
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics={"accuracy": pct(sum(accs), len(accs))},
            main_metric="accuracy",
            notes=[f"OCR tokens in prompt: {self.ocr}"],
        )
