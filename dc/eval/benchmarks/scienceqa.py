"""ScienceQA-IMG (test): option-letter accuracy on questions with an image (LLaVA eval_science_qa rules).

Files under ``$DATA_ROOT/eval/scienceqa``::

    llava_test_CQM-A.json     LLaVA question file: [{"id", "image"?, "conversations": [human, gpt]}]
    images/test/<id>/image.png
    problems.json             official problems {pid: {"choices", "answer": index, "subject", ...}}
    pid_splits.json           (not needed: the question file already is the test split)

Prompt: ``<image>\\n{Context/Question/Options text}\\nAnswer with the option's letter from the given
choices directly.`` (LLaVA ``--single-pred-prompt``); ``max_new_tokens = 1024`` (as in the reference code).

Parsing (exactly LLaVA's): the trimmed output is a bare letter ``A``-``E``; or starts with
``"X. "``; or contains exactly one ``The answer is X`` -- otherwise it fails (counts wrong). Note that
``"A."`` with nothing after it fails, as in the official script. A letter beyond the number of
choices is wrong. IMG-accuracy (the paper's SQA-I) is over questions with an image.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dc.eval.benchmarks.base import (
    IMAGE_TOKEN,
    OPTION_LETTER_SUFFIX,
    Benchmark,
    EvalRecord,
    IdAllocator,
    Skip,
    build_result,
    load_json,
    pct,
    with_image_token,
)

OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_sqa_letter(text: str) -> str | None:
    """LLaVA's ScienceQA parsing; returns the letter or None ("FAILED")."""
    t = text.strip()
    if t in OPTIONS:
        return t
    if len(t) >= 3 and t[0] in OPTIONS and t[1:3] == ". ":
        return t[0]
    found = _ANSWER_IS.findall(t)
    return found[0] if len(found) == 1 else None


class ScienceQA(Benchmark):
    """ScienceQA test (IMG subset by default).

    Args:
        root: ``$DATA_ROOT/eval/scienceqa``.
        question_file: LLaVA question file, relative to root.
        image_folder: Image folder, relative to root.
        problems_file: Official ``problems.json`` (ground truth), relative to root.
        img_only: Keep only questions with an image (only IMG-accuracy is reported in papers).
        **kw: ``limit``, ``check_images``.
    """

    name = "scienceqa"
    prompt_suffix = OPTION_LETTER_SUFFIX
    max_new_tokens = 1024

    def __init__(
        self,
        root: str | Path,
        *,
        question_file: str = "llava_test_CQM-A.json",
        image_folder: str = "images/test",
        problems_file: str = "problems.json",
        img_only: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        self.question_file = self.root / question_file
        self.image_folder = self.root / image_folder
        self.problems_file = self.root / problems_file
        self.img_only = img_only

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        problems: dict[str, Any] = load_json(self.problems_file) if self.problems_file.is_file() else {}
        records, skips = [], []
        new_id = IdAllocator()
        for n, item in enumerate(load_json(self.question_file)):
            try:
                pid = str(item["id"])
                human = item["conversations"][0]["value"]
            except (KeyError, IndexError, TypeError):
                skips.append(Skip(f"row:{n}", "malformed_line", "missing id/conversations"))
                continue
            has_image = bool(item.get("image"))
            if self.img_only and not has_image:
                continue
            image = self._image(self.image_folder, item["image"], pid, skips) if has_image else None
            if has_image and image is None:
                continue
            text = human.replace(IMAGE_TOKEN, "").strip()
            prompt = f"{text}\n{self.prompt_suffix}"
            meta: dict[str, Any] = {"question_id": pid, "has_image": has_image}
            prob = problems.get(pid)
            if prob is not None:
                meta.update(
                    answer=OPTIONS[prob["answer"]], num_choices=len(prob["choices"]), subject=prob.get("subject")
                )
            else:  # fall back to the gpt turn of the LLaVA file ("The answer is X.")
                gpt = item["conversations"][1]["value"] if len(item["conversations"]) > 1 else ""
                letter = parse_sqa_letter(gpt)
                if letter is not None:
                    meta["answer"] = letter
            records.append(
                EvalRecord(
                    new_id(pid), with_image_token(prompt) if has_image else prompt, image, self.max_new_tokens, meta
                )
            )
        return records, skips

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        skips = self._skips(skips)
        scored = [r for r in records if r.meta.get("answer")]
        skips += [Skip(r.id, "no_ground_truth") for r in records if not r.meta.get("answer")]
        if not scored:
            return self.no_ground_truth(records, answers, skips, "problems.json not found")
        hits: dict[str, list[int]] = defaultdict(list)
        for r in scored:
            letter = parse_sqa_letter(answers.get(r.id, ""))
            n_choices = r.meta.get("num_choices", len(OPTIONS))
            ok = int(letter is not None and letter in OPTIONS[:n_choices] and letter == r.meta["answer"])
            hits["all"].append(ok)
            if r.meta["has_image"]:
                hits["img"].append(ok)
            if r.meta.get("subject"):
                hits[f"subject:{r.meta['subject']}"].append(ok)
        metrics = {
            "img_accuracy": pct(sum(hits["img"]), len(hits["img"])),
            "accuracy": pct(sum(hits["all"]), len(hits["all"])),
        }
        subjects = {
            k.split(":", 1)[1]: pct(sum(v), len(v)) for k, v in sorted(hits.items()) if k.startswith("subject:")
        }
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics=metrics,
            main_metric="img_accuracy",
            breakdown={"subject": subjects} if subjects else {},
        )
