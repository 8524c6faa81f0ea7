"""MMMU validation: multiple-choice and open-answer accuracy with MMMU's parsing rules.

Files under ``$DATA_ROOT/eval/mmmu``::

    validation.jsonl    one sample per line (a JSON list file also works): "id", "question",
                        "options" (list or its Python-literal string), "answer", "question_type"
                        ("multiple-choice" | "open"), "image_1".."image_7" (paths relative to root)
    images/...          the image files

The official data is the Hugging Face dataset ``MMMU/MMMU`` (parquet), which needs ``datasets`` to
read; export it once, e.g.::

    for subject in SUBJECTS:                       # the 30 names in DISCIPLINES below
        for s in datasets.load_dataset("MMMU/MMMU", subject, split="validation"):
            row = {k: s[k] for k in ("id", "question", "options", "answer", "question_type")}
            for k in range(1, 8):
                if s[f"image_{k}"] is not None:
                    row[f"image_{k}"] = f"images/{s['id']}_{k}.png"
                    s[f"image_{k}"].save(root / row[f"image_{k}"])
            out.write(json.dumps(row) + "\\n")

Prompt (MMMU's ``configs/llava1.5.yaml`` as YAML parses it, with ``<image>\\n`` in front):
multiple-choice ``{question}\\n(A) {opt}\\n(B) {opt}\\n\\nAnswer with the option's letter from the given
choices directly.``; open ``{question}\\nAnswer the question using a single word or phrase.``;
``max_new_tokens = 128``. Generation is *not* greedy here: ``do_sample=True, temperature=1,
num_beams=5``, seed 42 (``generation_kwargs``; the reference code). Only ``image_1`` is given to the
model.

Samples whose options are images (``option_image_rule``, recorded in the result's ``options``):

- ``"official"`` (default): generated with ``image_1`` like every other sample, and the answer scored
  normally. The official script has a branch that would answer them without generation, but it is
  never taken: it looks for ``<img='...'>`` in the characters of the dataset's ``options`` *string*
  (MMMU issue #16). A sample without ``image_1`` does take
  that path in the script (no image to generate with): it gets a random letter (multiple choice) or
  the invalid string (open), recorded in ``meta["answer_override"]``.
- ``"script_branch"``: the branch as written was meant to work -- a sample whose parsed options hold
  more than one ``<img='...'>`` gets no image and the random letter / invalid answer.

The random letter (also the official answer to an unparsable multiple-choice response) is seeded per
sample, so a re-score is reproducible; the official script draws from Python's global generator.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dc.eval.benchmarks.base import (
    OPTION_LETTER_SUFFIX,
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
)
from dc.eval.benchmarks.choices import letters_for
from dc.eval.benchmarks.mmmu_parse import judge_open, parse_multi_choice, parse_open

DISCIPLINES = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": [
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": [
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ],
}
SUBJECT_TO_DISCIPLINE = {s: d for d, subs in DISCIPLINES.items() for s in subs}
INVALID_OPEN = "INVALID GENERATION FOR MULTIPLE IMAGE INPUTS"
_OPTION_IMG = re.compile(r"<img='(.*?)'>")
OPTION_IMAGE_RULES = ("official", "script_branch")


def subject_of(sample_id: str) -> str:
    """``validation_Art_Theory_12`` -> ``Art_Theory``."""
    parts = sample_id.split("_")
    return "_".join(parts[1:-1]) if len(parts) >= 3 else sample_id


def _literal(value: Any) -> Any:
    """Options/answers are stored as Python-literal strings (``"['a', 'b']"``); parse them safely."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


class MMMU(Benchmark):
    """MMMU validation split.

    Args:
        root: ``$DATA_ROOT/eval/mmmu``.
        data_file: Exported samples (JSONL or JSON list), relative to root.
        option_image_rule: ``"official"`` (default) or ``"script_branch"``; see the module docstring.
        **kw: ``limit``, ``check_images``.
    """

    name = "mmmu"
    prompt_suffix = OPTION_LETTER_SUFFIX  # open questions use SHORT_ANSWER_SUFFIX
    max_new_tokens = 128
    generation_kwargs = {"do_sample": True, "temperature": 1.0, "top_p": None, "num_beams": 5, "seed": 42}

    def __init__(
        self, root: str | Path, *, data_file: str = "validation.jsonl", option_image_rule: str = "official", **kw: Any
    ) -> None:
        super().__init__(root, **kw)
        if option_image_rule not in OPTION_IMAGE_RULES:
            raise ValueError(f"mmmu.option_image_rule must be one of {OPTION_IMAGE_RULES}, got {option_image_rule!r}")
        self.option_image_rule = option_image_rule
        self.data_file = self.root / data_file

    def _samples(self, skips: list[Skip]) -> list[dict[str, Any]]:
        if self.data_file.suffix == ".json":
            return list(load_json(self.data_file))
        out = []
        for line_no, obj, err in read_jsonl(self.data_file):
            if obj is None:
                skips.append(Skip(f"line:{line_no}", "malformed_line", err))
            else:
                out.append(obj)
        return out

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        skips: list[Skip] = []
        records = []
        new_id = IdAllocator()
        for n, s in enumerate(self._samples(skips)):
            options = _literal(s.get("options", []))
            qtype = s.get("question_type")
            valid = "id" in s and "question" in s and qtype in ("multiple-choice", "open") and isinstance(options, list)
            if not valid:
                skips.append(Skip(str(s.get("id", f"row:{n}")), "missing_field", "id/question/question_type/options"))
                continue
            sid = str(s["id"])
            meta: dict[str, Any] = {
                "question_id": sid,
                "question_type": qtype,
                "subject": subject_of(sid),
                "answer": _literal(s.get("answer")),
            }
            if qtype == "multiple-choice":
                letters = letters_for(len(options))
                meta["options"] = dict(zip(letters, map(str, options)))
                body = s["question"] + "\n" + "".join(f"({c}) {o}\n" for c, o in zip(letters, options))
                text = f"{body}\n{OPTION_LETTER_SUFFIX}"
            else:
                text = f"{s['question']}\n{SHORT_ANSWER_SUFFIX}"
            option_images = [m for o in options for m in _OPTION_IMG.findall(str(o))]
            image = None
            if (self.option_image_rule == "script_branch" and len(option_images) > 1) or not s.get("image_1"):
                # The official script's no-generation path (module docstring).
                meta["answer_override"] = "random_choice" if qtype == "multiple-choice" else "invalid"
            else:
                image = self._image(self.root, s["image_1"], sid, skips)
                if image is None:
                    continue
            meta["n_images"] = sum(1 for k in range(1, 8) if s.get(f"image_{k}"))
            prompt = with_image_token(text) if image is not None else text
            records.append(EvalRecord(new_id(sid), prompt, image, self.max_new_tokens, meta))
        return records, skips

    def is_correct(self, record: EvalRecord, answer: str) -> bool:
        """Judge one answer with MMMU's rules (including the no-generation overrides)."""
        m = record.meta
        if m["question_type"] == "multiple-choice":
            letters = list(m["options"])
            if m.get("answer_override") == "random_choice":
                pred = parse_multi_choice("", letters, m["options"], seed=record.id)  # no match -> seeded random
            else:
                pred = parse_multi_choice(answer, letters, m["options"], seed=record.id)
            gold = m["answer"]
            return pred in gold if isinstance(gold, list) else pred == gold
        if m.get("answer_override") == "invalid":
            answer = INVALID_OPEN
        return judge_open(m["answer"], parse_open(answer))

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        skips = self._skips(skips)
        skips += [Skip(r.id, "no_ground_truth") for r in records if r.meta.get("answer") in (None, "", [])]
        hits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for r in records:
            if r.meta.get("answer") in (None, "", []):
                continue
            ok = int(self.is_correct(r, answers.get(r.id, "")))
            hits["all"]["all"].append(ok)
            hits["question_type"][r.meta["question_type"]].append(ok)
            hits["subject"][r.meta["subject"]].append(ok)
            hits["discipline"][SUBJECT_TO_DISCIPLINE.get(r.meta["subject"], "unknown")].append(ok)
        if not hits:
            return self.no_ground_truth(records, answers, skips, "no answers in the data file")
        breakdown = {g: {k: pct(sum(v), len(v)) for k, v in sorted(d.items())} for g, d in hits.items() if g != "all"}
        all_hits = hits["all"]["all"]
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics={"accuracy": pct(sum(all_hits), len(all_hits))},
            main_metric="accuracy",
            breakdown=breakdown,
            notes=[
                "unparsable multiple-choice answers get a random letter seeded by the sample id",
                f"option image rule: {self.option_image_rule}",
            ],
            options={"option_image_rule": self.option_image_rule},
        )
