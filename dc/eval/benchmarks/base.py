"""Shared types and helpers for the benchmark readers/scorers.

Every benchmark turns the files a user already has (LLaVA's ``eval.zip`` question files plus the
official annotation files) into :class:`EvalRecord` prompts, and scores a mapping ``id -> raw model
output`` with the benchmark's official rules. Bad input never raises: a malformed line or a missing
image becomes a :class:`Skip` that is counted in the result.

Result dictionaries returned by ``Benchmark.score`` share one shape (built by :func:`build_result`)::

    {"benchmark": str, "status": "ok" | "needs_judge" | "no_ground_truth",
     "main_metric": str | None, "metrics": {name: float (0-100)},
     "breakdown": {group: {key: float | dict}},
     "counts": {"records", "answered", "missing", "skipped": {reason: n}, "skipped_total"},
     "notes": [str], "options": {name: value}}

``options`` records the scoring options that decide the numbers (e.g. ``{"scoring_rule": "official"}``),
so a result computed under a non-official rule can never pass for the official one.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

IMAGE_TOKEN = "<image>"
# `Benchmark.scoring_keys` of the benchmarks scored by a rule choice or by a judge model
SCORING_RULE_KEYS = ("scoring_rule",)
JUDGE_KEYS = ("use_judge", "judge_model", "judge_temperature", "judge_api_key_env", "judge_responses")
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
OPTION_LETTER_SUFFIX = "Answer with the option's letter from the given choices directly."


@dataclass
class EvalRecord:
    """One prompt to generate an answer for.

    Attributes:
        id: Unique (within the benchmark) string id; answers are keyed by it.
        prompt: User-turn text exactly as the model should see it, with ``<image>\\n`` at the front
            when an image is used and the benchmark's prompt suffix at the end.
        image: Image path, list of paths, or ``None`` for text-only prompts.
        max_new_tokens: Generation budget from the reference code.
        meta: JSON-serialisable extras (ground truth, category, original question id, ...).
        video: A video file or a folder of its frames, or ``None``. A video is one visual input: the prompt
            holds one ``<image>`` for it and ``image`` is ``None``.
    """

    id: str
    prompt: str
    image: Path | list[Path] | None
    max_new_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)
    video: Path | None = None


@dataclass(frozen=True)
class Skip:
    """An input item that could not be turned into a record (or scored).

    Attributes:
        id: The item's id if it could be read, else ``"line:<n>"`` / ``"row:<n>"``.
        reason: Short machine-readable category (counted in results), e.g. ``missing_image``.
        detail: Human-readable specifics (path, parse error).
    """

    id: str
    reason: str
    detail: str = ""


class Benchmark(ABC):
    """Base class: reads a benchmark's files into records and scores answers.

    Subclasses set the class attributes and implement :meth:`_load` and :meth:`score`.

    Args:
        root: The benchmark folder, e.g. ``$DATA_ROOT/eval/gqa``.
        limit: Keep only the first ``limit`` records (quick in-training evaluation).
        check_images: Verify that every image file exists (a missing one becomes a Skip).
    """

    name: ClassVar[str] = ""
    prompt_suffix: ClassVar[str | None] = None
    max_new_tokens: ClassVar[int] = 128
    # Generation settings the runner should use; greedy everywhere except MMMU (as in the reference code).
    generation_kwargs: ClassVar[dict[str, Any]] = {"do_sample": False, "num_beams": 1}
    # Extra passes over the same questions with altered inputs (e.g. "blank" images), scored as `<control>_<metric>`.
    controls: tuple[str, ...] = ()
    # Options this benchmark reads only when scoring: answers given under other values stay valid (a second run with
    # a judge's replies, or another scoring rule, scores the answers already on disk). Declared per class (none by
    # default): an option that changes which questions are asked or how (MMMU's `option_image_rule`) is not one.
    scoring_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | Path, *, limit: int | None = None, check_images: bool = True) -> None:
        self.root = Path(root)
        self.limit = limit
        self.check_images = check_images
        self.last_skips: list[Skip] = []

    def load(self) -> tuple[list[EvalRecord], list[Skip]]:
        """Read the benchmark files.

        Returns:
            ``(records, skips)``; records have unique ids. The skips are also remembered so a later
            :meth:`score` call can count them.

        Raises:
            FileNotFoundError: A required file (question/data file) is missing; the message names the
                benchmark, the path and where the module docstring says it should be.
        """
        try:
            records, skips = self._load()
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{self.name}: required file {e.filename} not found (root={self.root}); see the layout in "
                f"{type(self).__module__}'s docstring or set the file options"
            ) from e
        if self.limit is not None:
            records = records[: self.limit]
        self.last_skips = list(skips)
        return records, list(skips)

    @abstractmethod
    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        """Benchmark-specific reading; see :meth:`load`."""

    @abstractmethod
    def score(
        self,
        records: Sequence[EvalRecord],
        answers: Mapping[str, str],
        skips: Sequence[Skip] | None = None,
    ) -> dict[str, Any]:
        """Score raw model outputs.

        Args:
            records: Records from :meth:`load`.
            answers: ``record.id -> raw model output``; a record without an answer counts as missing.
            skips: Load-time skips to count; defaults to those of the last :meth:`load`.

        Returns:
            A result dict (see module docstring); metrics are percentages in ``[0, 100]``.
        """

    def control_records(self, control: str, records: Sequence[EvalRecord], out_dir: Path) -> list[EvalRecord]:
        """The records of control pass `control` (one of `controls`); files it needs go into `out_dir`."""
        raise ValueError(f"benchmark {self.name!r} has no control {control!r} (controls: {list(self.controls)})")

    def summary(self, result: Mapping[str, Any]) -> str:
        """One line for the terminal at the end of a run (default: every headline metric)."""
        return ", ".join(f"{k} {v:.2f}" for k, v in result.get("metrics", {}).items())

    def write_submission(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], out_dir: str | Path
    ) -> list[Path]:
        """Write the benchmark's official submission / judge-request files (no-op by default).

        Returns:
            The paths written.
        """
        return []

    # -- helpers shared by subclasses -------------------------------------------------------------

    def _skips(self, skips: Sequence[Skip] | None) -> list[Skip]:
        return list(self.last_skips if skips is None else skips)

    def unscored(
        self,
        records: Sequence[EvalRecord],
        answers: Mapping[str, str],
        skips: Iterable[Skip],
        status: str,
        notes: Iterable[str],
    ) -> dict[str, Any]:
        """The result when nothing can be scored yet (`status` says why: "no_ground_truth", "needs_judge"):
        counts kept, no metrics.
        """
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics={},
            main_metric=None,
            status=status,
            notes=notes,
        )

    def no_ground_truth(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Iterable[Skip], note: str
    ) -> dict[str, Any]:
        """`unscored` for a benchmark whose ground truth is missing; `note` says which file."""
        return self.unscored(records, answers, skips, "no_ground_truth", [note])

    def question_lines(
        self, path: Path, skips: list[Skip], required: tuple[str, ...] = ("question_id", "image", "text")
    ) -> Iterator[dict[str, Any]]:
        """The usable lines of a JSONL question file; malformed or incomplete lines become skips."""
        for line_no, obj, err in read_jsonl(path):
            if obj is None:
                skips.append(Skip(f"line:{line_no}", "malformed_line", err))
                continue
            if not all(k in obj for k in required):
                skips.append(Skip(str(obj.get("question_id", f"line:{line_no}")), "missing_field"))
                continue
            yield obj

    def _image(self, folder: Path, rel: str, item_id: str, skips: list[Skip]) -> Path | None:
        """Resolve an image path; record a Skip and return None when it is missing."""
        path = folder / rel
        if self.check_images and not path.is_file():
            skips.append(Skip(item_id, "missing_image", str(path)))
            return None
        return path


def with_suffix(text: str, suffix: str | None) -> str:
    """Append ``\\n{suffix}`` unless the text already ends with it (LLaVA files already carry it)."""
    text = text.rstrip()
    if not suffix or text.endswith(suffix):
        return text
    return f"{text}\n{suffix}"


def with_image_token(text: str) -> str:
    """Prefix ``<image>\\n`` (LLaVA's placement) unless the text already starts with it."""
    return text if text.startswith(IMAGE_TOKEN) else f"{IMAGE_TOKEN}\n{text}"


class IdAllocator:
    """Makes ids unique: LLaVA question files reuse ids (MME: two questions per image id)."""

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()

    def __call__(self, base: Any) -> str:
        base = str(base)
        n = self._seen[base]
        self._seen[base] += 1
        # The first occurrence keeps the plain id so LLaVA-style ids stay recognisable.
        return base if n == 0 else f"{base}#{n}"


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yield ``(line_no, obj, error)`` for each non-empty line; ``obj`` is None when unparsable."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield line_no, None, f"invalid JSON: {e}"
                continue
            if not isinstance(obj, dict):
                yield line_no, None, "line is not a JSON object"
                continue
            yield line_no, obj, ""


def load_json(path: Path) -> Any:
    """Read a JSON file (UTF-8)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def first_existing(*paths: Path) -> Path | None:
    """Return the first path that exists, else None."""
    for p in paths:
        if p.exists():
            return p
    return None


def pct(num: float, den: float) -> float:
    """``100 * num / den``, or 0.0 for an empty denominator."""
    return 100.0 * num / den if den else 0.0


def build_result(
    benchmark: str,
    *,
    records: Sequence[EvalRecord],
    answers: Mapping[str, str],
    skips: Iterable[Skip],
    metrics: Mapping[str, float],
    main_metric: str | None,
    breakdown: Mapping[str, Any] | None = None,
    status: str = "ok",
    notes: Iterable[str] = (),
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the common result dictionary (see module docstring)."""
    skip_counts = Counter(s.reason for s in skips)
    answered = sum(1 for r in records if r.id in answers)
    return {
        "benchmark": benchmark,
        "status": status,
        "main_metric": main_metric,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "breakdown": dict(breakdown or {}),
        "counts": {
            "records": len(records),
            "answered": answered,
            "missing": len(records) - answered,
            "skipped": dict(sorted(skip_counts.items())),
            "skipped_total": sum(skip_counts.values()),
        },
        "notes": list(notes),
        "options": dict(options or {}),
    }
