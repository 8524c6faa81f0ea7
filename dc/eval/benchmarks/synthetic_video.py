"""Synthetic video questions for the training-free video path (an image-trained model, no video training).

Files under the synthetic video folder (written by `dc.data.synthetic_video.generate`; by default
``$DATA_ROOT/synthetic_video/seed0_20``, generated on first use when `generate_if_missing`)::

    questions.jsonl     {"question_id", "video", "text", "answer", "category", "needs"}
    videos/<kind>_<k>.mp4, videos/blank.mp4

Prompt: ``<image>\\n{text}`` with the whole video as the one visual input (frames sampled as the reference, encoded
per frame, aggregated after the projector); ``max_new_tokens = 8``. Score: exact match after lowercasing, trimming
and dropping a trailing full stop; accuracy overall, per category and per `needs` (`frame`: answerable from any one
frame; `frames`: needs two frames; `order`: needs their order).

Controls: ``blank`` (the blank video instead of the clip: near chance when answers come from the frames) and
``frame`` (the middle sampled frame as a single image: what one frame alone supports).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dc.eval.benchmarks.base import Benchmark, EvalRecord, IdAllocator, Skip, build_result, pct
from dc.eval.benchmarks.synthetic import normalize


class SyntheticVideoQA(Benchmark):
    """The synthetic video task.

    Args:
        root: the task folder.
        question_file: relative to root.
        num_frames: frames sampled per clip; None (default): eval.py's ``video.num_frames`` (the reference's 8).
        max_new_tokens: generation budget.
        controls: control passes to run ("blank", "frame").
        generate_if_missing: write the task (deterministic, offline) when `root` holds none.
        n_per_kind: clips per kind when generating.
    """

    name = "synthetic_video"
    max_new_tokens = 8

    def __init__(
        self, root: str | Path, *, question_file: str = "questions.jsonl", num_frames: int | None = None, max_new_tokens: int = 8,
        controls: Sequence[str] = ("blank", "frame"), generate_if_missing: bool = True, n_per_kind: int = 20, **kw: Any,
    ) -> None:  # fmt: skip
        super().__init__(root, **kw)
        bad = [c for c in controls if c not in ("blank", "frame")]
        if bad:
            raise ValueError(f"synthetic_video.controls: unknown {bad}; allowed ['blank', 'frame']")
        self.question_file = self.root / question_file
        self.num_frames = None if num_frames is None else int(num_frames)
        self.max_new_tokens = int(max_new_tokens)
        self.controls = tuple(controls)
        self.generate_if_missing = generate_if_missing
        self.n_per_kind = int(n_per_kind)

    def _load(self) -> tuple[list[EvalRecord], list[Skip]]:
        if self.generate_if_missing and not self.question_file.exists():
            from dc.data.synthetic_video import generate

            generate(self.root, n_per_kind=self.n_per_kind)
        records: list[EvalRecord] = []
        skips: list[Skip] = []
        new_id = IdAllocator()
        for obj in self.question_lines(self.question_file, skips, ("question_id", "video", "text", "answer")):
            qid = new_id(obj["question_id"])
            video = self.root / "videos" / obj["video"]
            if self.check_images and not video.exists():
                skips.append(Skip(qid, "missing_video", str(video)))
                continue
            meta = {
                "answer": obj["answer"],
                "category": obj.get("category", "all"),
                "needs": obj.get("needs", "frame"),
                "num_frames": self.num_frames,
            }
            records.append(EvalRecord(qid, "<image>\n" + obj["text"], None, self.max_new_tokens, meta, video=video))
        return records, skips

    def control_records(self, control: str, records: Sequence[EvalRecord], out_dir: Path) -> list[EvalRecord]:
        if control == "blank":
            blank = self.root / "videos" / "blank.mp4"
            return [EvalRecord(r.id, r.prompt, None, r.max_new_tokens, r.meta, video=blank) for r in records]
        if control == "frame":
            from dc.data.video import decode_video

            folder = out_dir / "frames"
            folder.mkdir(parents=True, exist_ok=True)
            out = []
            for r in records:
                still = folder / f"{Path(r.video).stem}.png"
                if not still.exists():
                    frames = decode_video(r.video, int(r.meta.get("num_frames") or 8)).frames
                    frames[len(frames) // 2].save(still)
                out.append(EvalRecord(r.id, r.prompt, still, r.max_new_tokens, r.meta))
            return out
        return super().control_records(control, records, out_dir)

    def score(
        self, records: Sequence[EvalRecord], answers: Mapping[str, str], skips: Sequence[Skip] | None = None
    ) -> dict[str, Any]:
        hits: dict[str, list[bool]] = defaultdict(list)
        for rec in records:
            if rec.id not in answers:
                continue
            ok = normalize(answers[rec.id]) == normalize(rec.meta["answer"])
            for key in ("all", f"category_{rec.meta['category']}", f"needs_{rec.meta['needs']}"):
                hits[key].append(ok)
        metrics = {"accuracy": pct(sum(hits["all"]), len(hits["all"]))}
        metrics.update({f"accuracy_{k}": pct(sum(v), len(v)) for k, v in sorted(hits.items()) if k != "all"})
        return build_result(
            self.name,
            records=records,
            answers=answers,
            skips=self._skips(skips),
            metrics=metrics,
            main_metric="accuracy",
            notes=["chance: 25 % (colour/shape/count), 11 % (position), 50 % (yes/no)"],
        )

    def summary(self, result: Mapping[str, Any]) -> str:
        m = result["metrics"]
        lines = [f"video accuracy: {m['accuracy']:.1f} %"]
        for control, what in (("blank", "blank video"), ("frame", "middle frame only")):
            if f"{control}_accuracy" in m:
                lines.append(f"{what}: {m[f'{control}_accuracy']:.1f} %")
        for needs in ("frame", "frames", "order"):
            if f"accuracy_needs_{needs}" in m:
                cells = [f"video {m[f'accuracy_needs_{needs}']:.1f} %"]
                cells += [
                    f"{c} {m[f'{c}_accuracy_needs_{needs}']:.1f} %"
                    for c in ("blank", "frame")
                    if f"{c}_accuracy_needs_{needs}" in m
                ]
                lines.append(f"  needs {needs}: " + ", ".join(cells))
        return "\n".join(lines)
