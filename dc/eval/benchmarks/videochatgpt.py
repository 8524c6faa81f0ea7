"""Video-ChatGPT's generative benchmark: five GPT-judged 0-5 scores (as in the reference code).

Files (Video-ChatGPT's benchmark download, the Dense Connector's ``GPT_Zero_Shot_QA`` layout) under
``$DATA_ROOT/eval/videochatgpt``::

    generic_qa.json       [{"Q": str, "A": str, "video_name": str}, ...]   correctness, detail, context
    temporal_qa.json      [{"Q": str, "A": str, "video_name": str}, ...]   temporal understanding
    consistency_qa.json   [{"Q1": str, "Q2": str, "A": str, "video_name": str}, ...]   consistency
    Test_Videos/<video_name>.{mp4,avi,mov,mkv}     (the DC scripts call this folder VideoChatGPT_Test_Videos:
                                                    option ``video_folder``)

Records: one per generic and per temporal question, two per consistency item (Q1 and Q2 asked separately, the
same video, as the reference's consistency script does); ids ``<subset>/<video_name>_<n>`` (``n`` counts earlier
entries of the same video, the reference's key) plus ``/q1`` / ``/q2``. Prompt ``<image>\\n{question}``; greedy;
``max_new_tokens = 512``; 8 frames (``num_frames``).

Judging (``evaluate_benchmark_{1..5}_*.py``): each generic answer gets three requests (correctness, detail,
context), each temporal answer one, each consistency pair one (both questions, both answers, the common answer),
with the verbatim prompts of :mod:`video_judge`. The reply is ``{'score': 0-5}``; a criterion's score is the mean
of ``int(score)`` (0-5 scale, as published); ``average`` is the mean of the five criteria. The published scripts
hard-code ``model="gpt-3.5-turbo"`` whatever ``--gpt_version`` says; here ``judge_model`` (default
``gpt-3.5-turbo-0125``) is what is sent. Without replies the result has ``status="needs_judge"``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dc.eval.benchmarks.base import JUDGE_KEYS, Benchmark, EvalRecord, Skip, build_result
from dc.eval.benchmarks.judge import batch_line, collect_replies, make_judge, write_requests
from dc.eval.benchmarks.report import atomic_write_text
from dc.eval.benchmarks.video_judge import (
    DEFAULT_JUDGE_MAX_TOKENS,
    DEFAULT_JUDGE_MODEL,
    DEFAULT_JUDGE_TEMPERATURE,
    bench_messages,
    mean,
    parse_judge_dict,
    reply_score,
)
from dc.eval.benchmarks.video_qa import VIDEO_EXTENSIONS, VideoLocator, json_list, video_prompt

SUBSETS = ("generic", "temporal", "consistency")
CRITERIA = {
    "correctness": "generic",
    "detail": "generic",
    "context": "generic",
    "temporal": "temporal",
    "consistency": "consistency",
}
"""Each judged criterion and the subset whose answers it judges."""
_FIELDS = {
    "generic": ("Q", "A", "video_name"),
    "temporal": ("Q", "A", "video_name"),
    "consistency": ("Q1", "Q2", "A", "video_name"),
}


class VideoChatGPTBench(Benchmark):
    """Video-ChatGPT generative benchmark (correctness, detail, context, temporal, consistency).

    Args:
        root: ``$DATA_ROOT/eval/videochatgpt``.
        generic_file / temporal_file / consistency_file: Relative to root.
        video_folder: Relative to root.
        video_extensions: Extensions tried in order.
        subsets: Which of ``generic``, ``temporal``, ``consistency`` to load.
        num_frames: Frames per video (stored in each record's meta for the runner); None: eval.py's
            ``video.num_frames`` (the default; 8, the reference's).
        max_new_tokens: Generation budget (default 512).
        use_judge / judge_model / judge_api_key_env / judge_responses: See :mod:`judge`.
        judge_temperature: Sent with each request (the reference sends none: the API default 1.0).
        **kw: ``limit``, ``check_images`` (checks the videos).
    """

    name = "videochatgpt"
    scoring_keys = JUDGE_KEYS
    max_new_tokens = 512

    def __init__(
        self,
        root: str | Path,
        *,
        generic_file: str = "generic_qa.json",
        temporal_file: str = "temporal_qa.json",
        consistency_file: str = "consistency_qa.json",
        video_folder: str = "Test_Videos",
        video_extensions: Sequence[str] = VIDEO_EXTENSIONS,
        subsets: Sequence[str] = SUBSETS,
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
        bad = sorted(set(subsets) - set(SUBSETS))
        if bad or not subsets:
            raise ValueError(f"{self.name}: subsets {list(subsets)} must be a non-empty selection of {SUBSETS}")
        if num_frames is not None and num_frames <= 0:
            raise ValueError(f"{self.name}: num_frames must be positive, got {num_frames}")
        self.files = {
            "generic": self.root / generic_file,
            "temporal": self.root / temporal_file,
            "consistency": self.root / consistency_file,
        }
        self.subsets = tuple(s for s in SUBSETS if s in subsets)
        self.videos = VideoLocator(self.root / video_folder, "", video_extensions, self.check_images)
        self.num_frames = num_frames
        if max_new_tokens is not None:
            self.max_new_tokens = int(max_new_tokens)
        self.judge_model, self.judge_temperature = judge_model, float(judge_temperature)
        self.judge, self.judge_note = make_judge(use_judge, judge_model, judge_api_key_env)
        self.judge_responses = judge_responses

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        records: list[EvalRecord] = []
        skips: list[Skip] = []
        for subset in self.subsets:
            seen: Counter[str] = Counter()
            for k, item in enumerate(json_list(self.files[subset])):
                if not isinstance(item, dict) or not all(f in item for f in _FIELDS[subset]):
                    skips.append(Skip(f"{subset}/row:{k}", "missing_field", f"needs {', '.join(_FIELDS[subset])}"))
                    continue
                name = str(item["video_name"])
                key = f"{name}_{seen[name]}"
                seen[name] += 1
                rid = f"{subset}/{key}"
                video = self.videos(name)
                if video is None:
                    skips.append(Skip(rid, "missing_video", self.videos.describe(name)))
                    continue
                meta = {
                    "subset": subset,
                    "key": key,
                    "video_name": name,
                    "answer": item["A"],
                    "num_frames": self.num_frames,
                }
                if subset != "consistency":
                    records.append(
                        EvalRecord(
                            rid,
                            video_prompt(str(item["Q"])),
                            None,
                            self.max_new_tokens,
                            {**meta, "question": item["Q"]},
                            video=video,
                        )
                    )
                    continue
                for q in ("Q1", "Q2"):  # two generations; the judge sees them together
                    records.append(
                        EvalRecord(
                            f"{rid}/{q.lower()}",
                            video_prompt(str(item[q])),
                            None,
                            self.max_new_tokens,
                            {**meta, "question": item[q], "pair": q, "question1": item["Q1"], "question2": item["Q2"]},
                            video=video,
                        )
                    )
        return records, skips

    def judge_requests(self, records: Sequence[EvalRecord], answers: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """Requests keyed by ``<criterion>:<record id>`` (consistency: ``consistency:consistency/<key>``)."""
        out: dict[str, dict[str, Any]] = {}

        def add(criterion: str, target: str, **fields: str) -> None:
            cid = f"{criterion}:{target}"
            out[cid] = batch_line(
                cid,
                bench_messages(criterion, **fields),
                model=self.judge_model,
                temperature=self.judge_temperature,
                max_tokens=DEFAULT_JUDGE_MAX_TOKENS,
            )

        for r in records:
            m = r.meta
            if m["subset"] == "consistency":
                if m["pair"] != "Q1":
                    continue
                q2 = r.id[: -len("/q1")] + "/q2"
                if r.id in answers and q2 in answers:
                    add(
                        "consistency",
                        f"consistency/{m['key']}",
                        question1=str(m["question1"]),
                        question2=str(m["question2"]),
                        answer=str(m["answer"]),
                        pred1=answers[r.id],
                        pred2=answers[q2],
                    )
            elif r.id in answers:
                for criterion, subset in CRITERIA.items():
                    if subset == m["subset"]:
                        add(criterion, r.id, question=str(m["question"]), answer=str(m["answer"]), pred=answers[r.id])
        return out

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        skips = self._skips(skips)
        requests = self.judge_requests(records, answers)
        replies = collect_replies(requests, judge=self.judge, responses_file=self.judge_responses)
        scores = {cid: reply_score(parse_judge_dict(replies[cid])) for cid in requests if cid in replies}
        by_criterion: dict[str, list[int]] = defaultdict(list)
        for cid, s in scores.items():
            if s is not None:
                by_criterion[cid.split(":", 1)[0]].append(s)
        notes = [self.judge_note] if self.judge_note else []
        if not by_criterion:
            notes.append(
                "scoring needs the GPT judge: run videochatgpt_judge_requests.jsonl (write_submission) and "
                "pass the output as judge_responses, or set use_judge=True with the API key"
            )
            return self.unscored(records, answers, skips, "needs_judge", notes)
        skips += [Skip(cid, "judge_unparsable", replies[cid][:200]) for cid, s in scores.items() if s is None]
        metrics = {c: mean(by_criterion[c]) for c in CRITERIA if by_criterion.get(c)}
        if len(metrics) == len(CRITERIA):
            metrics["average"] = mean(metrics[c] for c in CRITERIA)
        graded = sum(len(v) for v in by_criterion.values())
        if graded < len(requests):
            notes.append(f"only {graded} of {len(requests)} judge requests have a reply that parses")
        counts = {c: float(len(by_criterion.get(c, []))) for c in CRITERIA}
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=skips,
            metrics=metrics,
            main_metric="average" if "average" in metrics else next(iter(metrics)),
            breakdown={"graded": counts},
            notes=notes,
        )

    def write_submission(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], out_dir: str | Path
    ) -> list[Path]:
        """The reference's prediction files (``videochatgpt_{generic,temporal,consistency}.jsonl``, readable by the
        published judge scripts) and ``videochatgpt_judge_requests.jsonl``.
        """
        out = Path(out_dir)
        rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            m = r.meta
            if r.id not in answers:
                continue
            if m["subset"] != "consistency":
                rows[m["subset"]].append(
                    {"Q": m["question"], "A": m["answer"], "video_name": m["video_name"], "pred": answers[r.id]}
                )
            elif m["pair"] == "Q1" and (q2 := r.id[: -len("/q1")] + "/q2") in answers:
                rows["consistency"].append(
                    {
                        "Q1": m["question1"],
                        "Q2": m["question2"],
                        "A": m["answer"],
                        "video_name": m["video_name"],
                        "pred1": answers[r.id],
                        "pred2": answers[q2],
                    }
                )
        paths = [
            atomic_write_text(
                out / f"{self.name}_{subset}.jsonl",
                "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows[subset]),
            )
            for subset in self.subsets
            if rows[subset]
        ]
        requests = self.judge_requests(records, answers)
        if requests:
            paths.append(write_requests(out / f"{self.name}_judge_requests.jsonl", requests.values()))
        return paths
