"""MME: per-subtask acc and acc+ (x100), perception and cognition totals (official calculation.py rules).

Files under ``$DATA_ROOT/eval/mme``::

    llava_mme.jsonl                          {"question_id": "<subtask>/<file>", "image", "text", "category"}
    MME_Benchmark_release_version/           official release: per subtask either
        <subtask>/<stem>.{jpg,png} + <stem>.txt          or
        <subtask>/images/<stem>.* + questions_answers_YN/<stem>.txt
                                             each .txt line: "{question}\\t{Yes|No}"

Prompt: the question-file text with ``<image>\\n`` in front, e.g. ``<image>\\n{question} Please answer
yes or no.\\nAnswer the question using a single word or phrase.`` (the suffix is appended if missing);
``max_new_tokens = 128`` (as in the reference code). Answer keys are looked up by the MME question text
(with "Please answer yes or no.", re-added if the question file dropped it).

Reading an answer (``scoring_rule``, recorded in the result's ``options``):

- ``"official"`` (default): MME's ``calculation.py`` on the file LLaVA's ``convert_answer_to_mme`` writes:
  the answer as ``model_vqa_loader`` stored it (whitespace-trimmed), lower-cased; exactly ``yes``/``no``
  -> itself, else its first 4 characters are searched for "yes" then "no", else "other" (always
  wrong). Periods stay: ``"...yes"`` is "other", ``"Yes."`` is "yes" (its first 4 characters hold "yes").
- ``"lmms_eval"``: lmms-eval's reading, which deletes every ``.`` first (``"...yes"`` -> "yes").

Not emulated: an answer containing a tab or newline breaks the official tab-separated file.

Scoring (per subtask): ``acc`` = correct questions / questions, ``acc+`` = images with both questions
correct / images, subtask score = 100*(acc + acc+). Perception = sum over the 10 perception subtasks
(max 2000), cognition = sum over 4 (max 800).
"""

from __future__ import annotations

import re
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
    first_existing,
    with_image_token,
    with_suffix,
)
from dc.eval.benchmarks.report import atomic_write_text

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_YES_NO = "Please answer yes or no."
SCORING_RULES = ("official", "lmms_eval")


def mme_parse(text: str, *, strip_periods: bool = False) -> str:
    """Read an answer as "yes" / "no" / "other" (``calculation.py``'s ``parse_pred_ans``).

    Args:
        text: Raw model output.
        strip_periods: Delete every ``.`` first (lmms-eval's rule; not the official one).
    """
    t = text.strip().lower()
    if strip_periods:
        t = t.replace(".", "")
    if t in ("yes", "no"):
        return t
    head = t[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def _norm_q(q: str) -> str:
    """Whitespace-insensitive key: the release has a few questions with a double space."""
    return re.sub(r"\s+", " ", q).strip()


class MME(Benchmark):
    """MME (14 subtasks).

    Args:
        root: ``$DATA_ROOT/eval/mme``.
        question_file: LLaVA question file, relative to root.
        benchmark_dir: Official release folder (images + answers), relative to root.
        scoring_rule: ``"official"`` (default) or ``"lmms_eval"``; see the module docstring.
        **kw: ``limit``, ``check_images``.
    """

    name = "mme"
    scoring_keys = SCORING_RULE_KEYS
    prompt_suffix = SHORT_ANSWER_SUFFIX
    max_new_tokens = 128

    def __init__(
        self,
        root: str | Path,
        *,
        question_file: str = "llava_mme.jsonl",
        benchmark_dir: str = "MME_Benchmark_release_version",
        scoring_rule: str = "official",
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        if scoring_rule not in SCORING_RULES:
            raise ValueError(f"mme.scoring_rule must be one of {SCORING_RULES}, got {scoring_rule!r}")
        self.scoring_rule = scoring_rule
        self.question_file = self.root / question_file
        bench = self.root / benchmark_dir
        # Some downloads nest the release one level deeper.
        self.benchmark_dir = bench / "MME_Benchmark" if (bench / "MME_Benchmark").is_dir() else bench

    def _answer_key(self, subtask: str, stem: str) -> dict[str, str]:
        sub = self.benchmark_dir / subtask
        path = first_existing(sub / "questions_answers_YN" / f"{stem}.txt", sub / f"{stem}.txt")
        out: dict[str, str] = {}
        if path is not None:
            for line in path.read_text(encoding="utf-8").splitlines():
                if "\t" in line:
                    q, a = line.rsplit("\t", 1)
                    out[_norm_q(q)] = a.strip().lower()
        return out

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        cache: dict[tuple[str, str], dict[str, str]] = {}
        records, skips = [], []
        new_id = IdAllocator()
        for obj in self.question_lines(self.question_file, skips, ("question_id", "image", "text")):
            qid = str(obj["question_id"])
            subtask = obj.get("category") or qid.split("/")[0]
            rid = new_id(qid)
            rel = obj["image"]
            alt = Path(subtask) / "images" / Path(rel).name
            if not (self.benchmark_dir / rel).is_file() and (self.benchmark_dir / alt).is_file():
                rel = str(alt)  # question file names the image without the images/ sub-folder
            image = self._image(self.benchmark_dir, rel, rid, skips)
            if image is None:
                continue
            stem = Path(obj["image"]).stem
            # LLaVA's file may carry its own suffix instead of MME's "Please answer yes or no."; the
            # prompt stays as in the file, only the answer-key lookup restores MME's question text.
            question = obj["text"].split("\n")[0].strip()
            if _YES_NO not in question:
                question = f"{question} {_YES_NO}"
            key = cache.setdefault((subtask, stem), self._answer_key(subtask, stem))
            meta = {
                "question_id": qid,
                "subtask": subtask,
                "image_stem": stem,
                "question": question,
                "label": key.get(_norm_q(question)),
            }
            records.append(
                EvalRecord(
                    rid,
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
        per_q: dict[str, list[int]] = defaultdict(list)
        per_img: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for r in records:
            if r.meta.get("label") not in ("yes", "no"):
                continue
            pred = mme_parse(answers.get(r.id, ""), strip_periods=self.scoring_rule == "lmms_eval")
            ok = int(pred == r.meta["label"])
            per_q[r.meta["subtask"]].append(ok)
            per_img[r.meta["subtask"]][r.meta["image_stem"]].append(ok)
        if not per_q:
            return self.no_ground_truth(
                records, answers, skips, "no answer key matched (MME_Benchmark_release_version missing?)"
            )
        breakdown: dict[str, dict[str, float]] = {}
        for sub, oks in per_q.items():
            imgs = per_img[sub].values()
            acc = 100.0 * sum(oks) / len(oks)
            acc_plus = 100.0 * sum(all(v) for v in imgs) / len(imgs)
            breakdown[sub] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
        perception = sum(breakdown[s]["score"] for s in PERCEPTION if s in breakdown)
        cognition = sum(breakdown[s]["score"] for s in COGNITION if s in breakdown)
        notes = [f"scoring rule: {self.scoring_rule}"]
        absent = [s for s in PERCEPTION + COGNITION if s not in breakdown]
        if absent:
            notes.append(f"subtasks without scored questions (totals exclude them): {absent}")
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics={"perception": perception, "cognition": cognition, "total": perception + cognition},
            main_metric="perception",
            breakdown={"subtask": dict(sorted(breakdown.items()))},
            notes=notes,
            options={"scoring_rule": self.scoring_rule},
        )

    def write_submission(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], out_dir: str | Path
    ) -> list[Path]:
        """Per-subtask ``<subtask>.txt`` in the official eval_tool format: image, question, gt, prediction."""
        rows: dict[str, list[str]] = defaultdict(list)
        for r in records:
            pred = " ".join(answers.get(r.id, "").split())  # tabs/newlines would break the format
            gt = (r.meta.get("label") or "").capitalize()
            rows[r.meta["subtask"]].append("\t".join([Path(r.meta["question_id"]).name, r.meta["question"], gt, pred]))
        out = Path(out_dir) / "mme_results"
        return [atomic_write_text(out / f"{sub}.txt", "\n".join(lines) + "\n") for sub, lines in sorted(rows.items())]
