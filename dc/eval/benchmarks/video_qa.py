"""Zero-shot open-ended video QA judged by GPT: MSVD-QA, MSRVTT-QA, ActivityNet-QA (as in the reference code).

The files are Video-ChatGPT's "GPT_Zero_Shot_QA" downloads (also shipped by Video-LLaVA and used by FreeVA and the
Dense Connector). Each dataset's folder, renamed::

    $DATA_ROOT/eval/msvd_qa/          (MSVD_Zero_Shot_QA)         test_q.json, test_a.json, videos/<video_name>.avi
    $DATA_ROOT/eval/msrvtt_qa/        (MSRVTT_Zero_Shot_QA)       test_q.json, test_a.json, videos/all/<video_name>.mp4
    $DATA_ROOT/eval/activitynet_qa/   (Activitynet_Zero_Shot_QA)  test_q.json, test_a.json, all_test/v_<video_name>.mp4

    test_q.json   [{"video_name": str, "question_id": str, "question": str}, ...]
    test_a.json   [{"question_id": str, "answer": str, "type": int (ActivityNet)}, ...]   same order

A video is looked up as ``<video_folder>/<prefix><video_name><ext>`` for the extensions ``.mp4 .avi .mov .mkv`` in
that order (the reference's list; ActivityNet adds the ``v_`` prefix, as the reference does for an "Activitynet"
folder), or a folder of extracted frames of that name. A question without a video is skipped and counted
(``missing_video``; the reference drops it silently). Answers pair with questions by ``question_id`` (the reference
pairs by position; the official files are in the same order, so the pairs are the same).

Prompt: ``<image>\\n{question}`` with the whole video as the one ``<image>``; greedy; ``max_new_tokens = 512``
(the Dense Connector's; FreeVA uses 128: option ``max_new_tokens``); 8 frames (``num_frames``, in ``meta``).

Judging (Video-ChatGPT ``evaluate_activitynet_qa.py`` = DC ``eval_video_qa.py``): one request per answer, the
verbatim prompts of :mod:`video_judge`, judge ``gpt-3.5-turbo-0125`` by default (``judge_model``; the reference
scripts name 0301/0613/0125 and FreeVA shows the scores move between them). The reply is a dict
``{'pred': 'yes'|'no', 'score': 0-5}``; accuracy = yes / (yes + no) x 100, score = mean of ``int(score)`` (0-5, not a
percentage). Replies come from ``judge_responses`` or the live judge (:mod:`judge`); without any the result has
``status="needs_judge"`` and ``write_submission`` leaves the request file to run anywhere.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from dc.eval.benchmarks.base import (
    IMAGE_TOKEN,
    JUDGE_KEYS,
    Benchmark,
    EvalRecord,
    IdAllocator,
    Skip,
    build_result,
    load_json,
    pct,
)
from dc.eval.benchmarks.judge import batch_line, collect_replies, make_judge, write_requests
from dc.eval.benchmarks.report import atomic_write_text
from dc.eval.benchmarks.video_judge import (
    DEFAULT_JUDGE_MAX_TOKENS,
    DEFAULT_JUDGE_MODEL,
    DEFAULT_JUDGE_TEMPERATURE,
    mean,
    parse_judge_dict,
    qa_messages,
    reply_score,
    reply_verdict,
)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")  # the reference scripts' list, in their order


class VideoLocator:
    """Finds a video by name under a folder (cached: many questions share a video).

    Args:
        folder: The video folder.
        prefix: Prepended to the name (``v_`` for ActivityNet); the bare name is tried after it.
        extensions: File extensions tried in order; a folder of frames with the bare candidate name also counts.
        check: When False, return the first candidate path without touching the disk.
    """

    def __init__(
        self, folder: Path, prefix: str = "", extensions: Sequence[str] = VIDEO_EXTENSIONS, check: bool = True
    ) -> None:
        self.folder, self.prefix, self.extensions, self.check = folder, prefix, tuple(extensions), check
        self._cache: dict[str, Path | None] = {}

    def __call__(self, name: str) -> Path | None:
        if name not in self._cache:
            self._cache[name] = self._find(name)
        return self._cache[name]

    def _find(self, name: str) -> Path | None:
        stems = [self.prefix + name, name] if self.prefix else [name]
        if not self.check:
            return self.folder / f"{stems[0]}{self.extensions[0]}"
        for stem in stems:
            for ext in self.extensions:
                if (p := self.folder / f"{stem}{ext}").is_file():
                    return p
            if (p := self.folder / stem).is_dir():
                return p
        return None

    def describe(self, name: str) -> str:
        """Where the lookup went, for a skip's detail."""
        return f"{self.folder}/{self.prefix}{name}{{{','.join(self.extensions)}}} (or a frame folder)"


def video_prompt(question: str) -> str:
    """``<image>\\n{question}``: the reference's user turn, the whole video as one visual input."""
    return f"{IMAGE_TOKEN}\n{question}"


def json_list(path: Path) -> list[Any]:
    """A JSON file that must hold a list (raises ValueError naming the file otherwise)."""
    data = load_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    return data


class VideoQA(Benchmark):
    """Open-ended video QA with a GPT judge (base of MSVD-QA, MSRVTT-QA, ActivityNet-QA).

    Args:
        root: The dataset folder under ``$DATA_ROOT/eval``.
        question_file / answer_file: Relative to root.
        video_folder: Relative to root (default: the dataset's).
        video_prefix: Prepended to ``video_name`` (default: the dataset's).
        video_extensions: Extensions tried in order.
        num_frames: Frames per video (stored in each record's meta for the runner); None: eval.py's
            ``video.num_frames`` (the default; 8, the reference's).
        max_new_tokens: Generation budget (default 512).
        use_judge / judge_model / judge_api_key_env / judge_responses: See :mod:`judge`.
        judge_temperature: Sent with each request (the reference sends none: the API default 1.0).
        **kw: ``limit``, ``check_images`` (checks the videos).
    """

    max_new_tokens = 512
    default_video_folder: ClassVar[str] = "videos"
    default_video_prefix: ClassVar[str] = ""

    scoring_keys = JUDGE_KEYS

    def __init__(
        self,
        root: str | Path,
        *,
        question_file: str = "test_q.json",
        answer_file: str = "test_a.json",
        video_folder: str | None = None,
        video_prefix: str | None = None,
        video_extensions: Sequence[str] = VIDEO_EXTENSIONS,
        num_frames: int | None = None,
        max_new_tokens: int | None = None,
        use_judge: bool = False,
        judge_model: str = DEFAULT_JUDGE_MODEL,
        judge_api_key_env: str = "OPENAI_API_KEY",
        judge_responses: str | None = None,
        judge_temperature: float = DEFAULT_JUDGE_TEMPERATURE,
        **kw: Any,
    ) -> None:
        super().__init__(root, **kw)
        if num_frames is not None and num_frames <= 0:
            raise ValueError(f"{self.name}: num_frames must be positive, got {num_frames}")
        self.question_file = self.root / question_file
        self.answer_file = self.root / answer_file
        self.videos = VideoLocator(
            self.root / (video_folder if video_folder is not None else self.default_video_folder),
            self.default_video_prefix if video_prefix is None else video_prefix,
            video_extensions,
            self.check_images,
        )
        self.num_frames = num_frames
        if max_new_tokens is not None:
            self.max_new_tokens = int(max_new_tokens)
        self.judge_model, self.judge_temperature = judge_model, float(judge_temperature)
        self.judge, self.judge_note = make_judge(use_judge, judge_model, judge_api_key_env)
        self.judge_responses = judge_responses

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        questions, answers = json_list(self.question_file), json_list(self.answer_file)
        by_id = {str(a["question_id"]): a for a in answers if isinstance(a, dict) and "question_id" in a}
        use_ids = len(by_id) == len(answers)
        records, skips = [], []
        new_id = IdAllocator()
        for k, q in enumerate(questions):
            if not isinstance(q, dict) or not all(f in q for f in ("video_name", "question_id", "question")):
                skips.append(Skip(f"row:{k}", "missing_field", "needs video_name, question_id, question"))
                continue
            qid = str(q["question_id"])
            a = by_id.get(qid) if use_ids else (answers[k] if k < len(answers) else None)
            if not isinstance(a, dict) or "answer" not in a:
                skips.append(Skip(qid, "missing_answer", str(self.answer_file)))
                continue
            video = self.videos(str(q["video_name"]))
            if video is None:
                skips.append(Skip(qid, "missing_video", self.videos.describe(str(q["video_name"]))))
                continue
            meta = {
                "question_id": q["question_id"],
                "video_name": q["video_name"],
                "question": q["question"],
                "answer": a["answer"],
                "type": a.get("type"),
                "num_frames": self.num_frames,
            }
            records.append(
                EvalRecord(new_id(qid), video_prompt(str(q["question"])), None, self.max_new_tokens, meta, video=video)
            )
        return records, skips

    def judge_requests(self, records: Sequence[EvalRecord], answers: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """Judge requests keyed by record id (answered records only)."""
        return {
            r.id: batch_line(
                r.id,
                qa_messages(str(r.meta["question"]), str(r.meta["answer"]), answers[r.id]),
                model=self.judge_model,
                temperature=self.judge_temperature,
                max_tokens=DEFAULT_JUDGE_MAX_TOKENS,
            )
            for r in records
            if r.id in answers
        }

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        skips = self._skips(skips)
        requests = self.judge_requests(records, answers)
        replies = collect_replies(requests, judge=self.judge, responses_file=self.judge_responses)
        parsed = {rid: parse_judge_dict(replies[rid]) for rid in requests if rid in replies}
        scores = {rid: reply_score(d) for rid, d in parsed.items()}
        verdicts = {rid: reply_verdict(d) for rid, d in parsed.items()}
        graded = [rid for rid in parsed if scores[rid] is not None or verdicts[rid] is not None]
        notes = [self.judge_note] if self.judge_note else []
        if not graded:
            notes.append(
                f"scoring needs the GPT judge: run {self.name}_judge_requests.jsonl (write_submission) and "
                "pass the output as judge_responses, or set use_judge=True with the API key"
            )
            return self.unscored(records, answers, skips, "needs_judge", notes)
        skips += [Skip(rid, "judge_unparsable", replies[rid][:200]) for rid in parsed if rid not in graded]
        if len(graded) < len(requests):
            notes.append(f"only {len(graded)} of {len(requests)} answers have a judge reply that parses")
        by_id = {r.id: r for r in records}
        groups: dict[str, list[str]] = defaultdict(list)
        for rid in graded:
            if by_id[rid].meta.get("type") is not None:
                groups[str(by_id[rid].meta["type"])].append(rid)

        def summary(rids: Sequence[str]) -> dict[str, float]:
            yes = sum(1 for r in rids if verdicts[r] is True)
            no = sum(1 for r in rids if verdicts[r] is False)
            return {
                "accuracy": pct(yes, yes + no),
                "score": mean(s for r in rids if (s := scores[r]) is not None),
                "yes": float(yes),
                "no": float(no),
            }

        overall = summary(graded)
        breakdown: dict[str, Any] = {"judge": {k: overall[k] for k in ("yes", "no")}}
        if groups:
            breakdown["type"] = {t: summary(rids) for t, rids in sorted(groups.items())}
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics={"accuracy": overall["accuracy"], "score": overall["score"]},
            main_metric="accuracy",
            breakdown=breakdown,
            notes=notes,
        )

    def write_submission(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], out_dir: str | Path
    ) -> list[Path]:
        """``{name}_preds.jsonl`` (the reference's ``merge.jsonl`` lines: id, question, answer, pred) and the
        judge requests ``{name}_judge_requests.jsonl``.
        """
        out = Path(out_dir)
        rows = [
            {
                "id": r.meta["question_id"],
                "question": r.meta["question"],
                "answer": r.meta["answer"],
                "pred": answers[r.id],
            }
            for r in records
            if r.id in answers
        ]
        paths = [
            atomic_write_text(
                out / f"{self.name}_preds.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows)
            )
        ]
        requests = self.judge_requests(records, answers)
        if requests:
            paths.append(write_requests(out / f"{self.name}_judge_requests.jsonl", requests.values()))
        return paths


class MSVDQA(VideoQA):
    """MSVD-QA (``$DATA_ROOT/eval/msvd_qa``; videos in ``videos/``)."""

    name = "msvd_qa"


class MSRVTTQA(VideoQA):
    """MSRVTT-QA (``$DATA_ROOT/eval/msrvtt_qa``; videos in ``videos/all/``)."""

    name = "msrvtt_qa"
    default_video_folder = "videos/all"


class ActivityNetQA(VideoQA):
    """ActivityNet-QA (``$DATA_ROOT/eval/activitynet_qa``; videos ``all_test/v_<name>``)."""

    name = "activitynet_qa"
    default_video_folder = "all_test"
    default_video_prefix = "v_"
