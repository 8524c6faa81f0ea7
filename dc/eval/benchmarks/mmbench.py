"""MMBench dev (EN / CN): circular evaluation over option rotations, plus single-pass accuracy.

Files under ``$DATA_ROOT/eval/mmbench``::

    mmbench_dev_20230712.tsv          EN dev (lang="en"); columns index, question, hint, A..D, answer,
    mmbench_dev_cn_20231003.tsv       CN dev (lang="cn")   category, l2-category, image (base64), ...
    _images/<lang>/<index>.jpg        decoded images (written on first load; ``image_cache_dir``)

Prompt (LLaVA model_vqa_mmbench ``--single-pred-prompt``): ``<image>\\n[{hint}\\n]{question}\\nA. {opt}
\\nB. {opt}...\\nAnswer with the option's letter from the given choices directly.`` (CN suffix
"请直接回答选项字母。"); ``max_new_tokens = 1024`` (as in the reference code).

Circular evaluation: a question is right only if every rotation of its options is answered right.
A TSV that already holds rotated copies (OpenCompass convention: rows ``index + k * 1_000_000``,
grouped by ``index % 1_000_000``) is used as is; for a file without them, ``circular=True`` generates
the rotations the way LLaVA's ``--all-rounds`` does (option texts shift by one, letters stay A, B,
...), with the same ``index + k * 1_000_000`` ids. Single-pass ("plain") accuracy uses only the un-rotated rows.

Answers are matched to letters with the rule-based stage of VLMEvalKit's matcher
(:func:`choices.vlmevalkit_match`; no model judge). ``scoring_rule`` (recorded in the result's
``options``):

- ``"official"`` (default): the matcher as of mid-2024, when the paper was published -- option-text
  matching applies to answers of any length.
- ``"length_limit"``: the later VLMEvalKit rule; option-text matching is skipped when the answer is
  longer than twice the option texts together (an explanation quoting one option no longer counts).
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dc.eval.benchmarks.base import (
    OPTION_LETTER_SUFFIX,
    SCORING_RULE_KEYS,
    Benchmark,
    EvalRecord,
    Skip,
    build_result,
    pct,
    with_image_token,
)
from dc.eval.benchmarks.choices import vlmevalkit_match
from dc.eval.benchmarks.report import atomic_write_text

CN_SUFFIX = "请直接回答选项字母。"
ROTATION_STRIDE = 1_000_000
_LETTERS = ("A", "B", "C", "D")
_FILES = {"en": "mmbench_dev_20230712.tsv", "cn": "mmbench_dev_cn_20231003.tsv"}
SCORING_RULES = ("official", "length_limit")


def is_none(value: str | None) -> bool:
    """Empty cell as pandas would read it (``nan``/``none``/blank)."""
    return value is None or value.strip().lower() in ("", "nan", "none")


def _save_image(b64: str, path: Path) -> None:
    """Decode once; temp file + rename so concurrent loaders never see a partial image."""
    if path.is_file():
        return
    data = base64.b64decode(b64, validate=False)
    if not data:
        raise ValueError("empty image data")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class MMBench(Benchmark):
    """MMBench dev with circular evaluation.

    Args:
        root: ``$DATA_ROOT/eval/mmbench``.
        lang: ``"en"`` or ``"cn"`` (picks the default file and the prompt suffix).
        question_file: TSV, relative to root (default by ``lang``).
        circular: Evaluate all rotations (generate them if the file has none).
        image_cache_dir: Where decoded images go (default ``<root>/_images``).
        scoring_rule: ``"official"`` (default) or ``"length_limit"``; see the module docstring.
        **kw: ``limit``, ``check_images`` (images are always decoded; ``check_images`` is unused).
    """

    name = "mmbench"
    scoring_keys = SCORING_RULE_KEYS
    prompt_suffix = OPTION_LETTER_SUFFIX
    max_new_tokens = 1024

    def __init__(
        self,
        root: str | Path,
        *,
        lang: str = "en",
        question_file: str | None = None,
        circular: bool = True,
        image_cache_dir: str | None = None,
        scoring_rule: str = "official",
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        if lang not in _FILES:
            raise ValueError(f"mmbench.lang must be one of {sorted(_FILES)}, got {lang!r}")
        if scoring_rule not in SCORING_RULES:
            raise ValueError(f"mmbench.scoring_rule must be one of {SCORING_RULES}, got {scoring_rule!r}")
        self.scoring_rule = scoring_rule
        self.lang = lang
        self.suffix = CN_SUFFIX if lang == "cn" else OPTION_LETTER_SUFFIX
        self.question_file = self.root / (question_file or _FILES[lang])
        self.circular = circular
        self.image_cache = Path(image_cache_dir) if image_cache_dir else self.root / "_images"

    def _rows(self) -> list[dict[str, str]]:
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images exceed the 128 KiB default
        with open(self.question_file, encoding="utf-8", newline="") as f:
            # Default quoting: pandas-written TSVs quote cells that contain newlines or tabs.
            return list(csv.DictReader(f, delimiter="\t"))

    def _record(
        self, index: int, row: dict[str, str], options: list[str], answer: str | None, image: Path
    ) -> EvalRecord:
        question = row.get("question", "")
        if not is_none(row.get("hint")):
            question = f"{row['hint']}\n{question}"
        for letter, opt in zip(_LETTERS, options):
            question += f"\n{letter}. {opt}"
        meta = {
            "index": index,
            "group": index % ROTATION_STRIDE,
            "rotation": index // ROTATION_STRIDE,
            "options": dict(zip(_LETTERS, options)),
            "answer": answer,
            "question": row.get("question", ""),
            "category": row.get("category"),
            "l2_category": row.get("l2-category"),
        }
        prompt = with_image_token(f"{question}\n{self.suffix}")
        return EvalRecord(str(index), prompt, image, self.max_new_tokens, meta)

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        records, skips = [], []
        rows = self._rows()
        has_copies = any((r.get("index") or "").strip().isdigit() and int(r["index"]) >= ROTATION_STRIDE for r in rows)
        for n, row in enumerate(rows):
            try:
                index = int(row["index"])
            except (KeyError, TypeError, ValueError):
                skips.append(Skip(f"row:{n + 2}", "malformed_line", "bad or missing index"))
                continue
            if not self.circular and index >= ROTATION_STRIDE:
                continue
            options = []
            for letter in _LETTERS:
                if is_none(row.get(letter)):
                    break
                options.append(row[letter])
            if len(options) < 2 or row.get("question") is None:
                skips.append(Skip(str(index), "malformed_line", "fewer than two options / no question"))
                continue
            image = self.image_cache / self.lang / f"{index % ROTATION_STRIDE}.jpg"
            try:
                _save_image(row.get("image") or "", image)
            except (binascii.Error, ValueError) as e:
                skips.append(Skip(str(index), "bad_image_data", str(e)))
                continue
            answer = None if is_none(row.get("answer")) else row["answer"].strip()
            records.append(self._record(index, row, options, answer, image))
            if self.circular and not has_copies:
                gt = _LETTERS.index(answer) if answer in _LETTERS[: len(options)] else None
                for k in range(1, len(options)):
                    rotated = options[k:] + options[:k]
                    # Original option j now shows at position (j - k) mod n.
                    ans_k = _LETTERS[(gt - k) % len(options)] if gt is not None else None
                    records.append(self._record(index + k * ROTATION_STRIDE, row, rotated, ans_k, image))
        return records, skips

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        skips = self._skips(skips)
        skips += [Skip(r.id, "no_ground_truth") for r in records if not r.meta.get("answer")]
        groups: dict[int, list[int]] = defaultdict(list)
        plain: list[int] = []
        group_meta: dict[int, dict[str, Any]] = {}
        for r in records:
            if not r.meta.get("answer"):
                continue
            pred = vlmevalkit_match(
                answers.get(r.id, ""), r.meta["options"], length_limit=self.scoring_rule == "length_limit"
            )
            ok = int(pred == r.meta["answer"])
            groups[r.meta["group"]].append(ok)
            group_meta.setdefault(r.meta["group"], r.meta)
            if r.meta["rotation"] == 0:
                plain.append(ok)
        if not groups:
            return self.no_ground_truth(records, answers, skips, "no 'answer' column values")
        circ = {g: int(all(v)) for g, v in groups.items()}
        breakdown: dict[str, dict[str, float]] = {}
        for field in ("category", "l2_category"):
            acc: dict[str, list[int]] = defaultdict(list)
            for g, ok in circ.items():
                if group_meta[g].get(field):
                    acc[group_meta[g][field]].append(ok)
            if acc:
                breakdown[field] = {k: pct(sum(v), len(v)) for k, v in sorted(acc.items())}
        metrics = {
            "accuracy_circular": pct(sum(circ.values()), len(circ)),
            "accuracy_plain": pct(sum(plain), len(plain)),
        }
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics=metrics,
            main_metric="accuracy_circular" if self.circular else "accuracy_plain",
            breakdown=breakdown,
            notes=[f"answer matching: VLMEvalKit rules, {self.scoring_rule}"],
            options={"scoring_rule": self.scoring_rule},
        )

    def write_submission(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], out_dir: str | Path
    ) -> list[Path]:
        """LLaVA's upload table (index, question, A-D, answer, prediction) as ``.tsv`` and ``.jsonl``."""
        cols = ["index", "question", *_LETTERS, "answer", "prediction", "category", "l2-category"]
        rows = []
        for r in records:
            m = r.meta
            opts = {k: m["options"].get(k, "") for k in _LETTERS}
            rows.append(
                {
                    "index": m["index"],
                    "question": m["question"],
                    **opts,
                    "answer": m.get("answer") or "",
                    "prediction": answers.get(r.id, ""),
                    "category": m.get("category") or "",
                    "l2-category": m.get("l2_category") or "",
                }
            )

        def cell(v: Any) -> str:
            return " ".join(str(v).split())  # tabs/newlines would break the TSV

        tsv = "\t".join(cols) + "\n" + "".join("\t".join(cell(row[c]) for c in cols) + "\n" for row in rows)
        jsonl = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        out = Path(out_dir)
        stem = f"mmbench_{self.lang}_dev_predictions"
        return [atomic_write_text(out / f"{stem}.tsv", tsv), atomic_write_text(out / f"{stem}.jsonl", jsonl)]
