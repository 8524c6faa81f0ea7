"""Data-parallel answering: which records a rank answers, where it writes, how the answers merge, and when answers
already on disk may be reused.

* Every rank writes its own file, `<stem>.rank<r>.jsonl` in `<output>/.parts/`, a line per answer, flushed as
  produced (`AnswerWriter`): a killed run loses at most the line being written.
* The records still to answer are those in no file yet (the merged file and every part, whatever world size wrote
  them); they are sorted by prompt length (less padding per batch) and dealt out round-robin, so the result does not
  depend on how many ranks there are, and a resumed run (with any number of ranks) picks up exactly what is missing.
* After a barrier rank 0 merges every answer into `<stem>.jsonl` in the benchmark's record order (atomically) and
  removes the parts: the merged file is identical for 1 or N ranks.
* `<stem>.meta.json` holds the fingerprint of what produced the answers (model, benchmark, generation settings);
  a later run with a different fingerprint refuses, naming the file, unless told to start fresh (`overwrite=true`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dc.eval.benchmarks.answers_io import read_answer_records
from dc.eval.benchmarks.report import atomic_write_json, atomic_write_text

PARTS = ".parts"


class StaleAnswersError(RuntimeError):
    """Answers on disk came from another model, benchmark or generation setting."""


class AnswerFiles:
    """The answer files of one benchmark pass (`stem` like `gqa_answers` or `synthetic_blank_answers`)."""

    def __init__(self, out_dir: str | Path, stem: str) -> None:
        self.out_dir = Path(out_dir)
        self.stem = stem
        self.merged = self.out_dir / f"{stem}.jsonl"
        self.meta = self.out_dir / f"{stem}.meta.json"
        self.parts_dir = self.out_dir / PARTS

    def part(self, rank: int) -> Path:
        """This rank's file."""
        return self.parts_dir / f"{self.stem}.rank{rank}.jsonl"

    def parts(self) -> list[Path]:
        """Every rank file present (from this or an earlier run, any world size)."""
        return sorted(self.parts_dir.glob(f"{self.stem}.rank*.jsonl")) if self.parts_dir.exists() else []

    def answers(self) -> dict[str, str]:
        """Every answer on disk: the merged file, then the parts (a record answered twice keeps its first answer)."""
        out: dict[str, str] = {}
        for path in [self.merged, *self.parts()]:
            for obj in read_answer_records(path):
                out.setdefault(obj["id"], obj["text"])
        return out

    def check_fingerprint(
        self,
        fingerprint: dict[str, Any],
        overwrite: bool,
        recorded_as_now: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """Refuse answers from another setting (or delete them when `overwrite`); record this run's fingerprint.
        `recorded_as_now` rewrites a recorded fingerprint as this version would write it, before comparing.

        Raises:
            StaleAnswersError: answers exist and their recorded fingerprint differs (or none is recorded).
        """
        has_answers = self.merged.exists() or bool(self.parts())
        if has_answers and not overwrite:
            recorded = json.loads(self.meta.read_text()) if self.meta.exists() else None
            if recorded is not None and recorded_as_now is not None:
                recorded = recorded_as_now(recorded)
            if recorded != json.loads(json.dumps(fingerprint)):
                diff = _differences(recorded or {}, fingerprint)
                raise StaleAnswersError(
                    f"{self.merged} holds answers from another model, benchmark or generation setting "
                    f"({'; '.join(diff) or 'no fingerprint recorded'}); use a new output folder "
                    f"(hydra.run.dir=...) or overwrite=true to start fresh"
                )
        if overwrite:
            self.merged.unlink(missing_ok=True)
            for path in self.parts():
                path.unlink()
        atomic_write_json(self.meta, fingerprint)

    def merge(self, order: Sequence[str]) -> dict[str, str]:
        """Write every answer into the merged file in `order` (ids not in `order` after, sorted); drop the parts."""
        answers = self.answers()
        listed = [i for i in order if i in answers]
        rest = sorted(set(answers) - set(listed))
        lines = [json.dumps({"id": i, "text": answers[i]}, ensure_ascii=False) for i in [*listed, *rest]]
        atomic_write_text(self.merged, "".join(line + "\n" for line in lines))
        for path in self.parts():
            path.unlink()
        if self.parts_dir.exists() and not any(self.parts_dir.iterdir()):
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        return answers


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), json.loads(json.dumps(new.get(key)))
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out[:5]


def deal(todo: Sequence[Any], lengths: Sequence[int], rank: int, world: int) -> list[Any]:
    """This rank's share of `todo`: sorted by length (longest first, ties by position), then every world-th."""
    order = sorted(range(len(todo)), key=lambda k: (-lengths[k], k))
    return [todo[k] for k in order[rank::world]]
