"""Video through eval.py on an image-trained tiny model: frames sampled, encoded per frame, pooled after the
projector into one placeholder; bad videos skipped and counted; batched = one at a time; too many frames refused."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from dc.data.synthetic_video import generate
from dc.models.visual.temporal import temporal_tokens
from dc.pipeline import evaluate, train

from dc_testing import compose_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("run")
    cfg = compose_config(
        "train",
        [
            "debug=fast",
            f"paths.output_dir={out}",
            f"paths.data_dir={data_dir}",
            "run_name=t",
            "logger=[]",
            "trainer.enable_progress_bar=false",
            "trainer.max_steps=1",
        ],
    )
    train(cfg)
    root = generate(tmp_path_factory.mktemp("video") / "task", n_per_kind=1)
    (root / "videos" / "static_0000.mp4").write_bytes(b"this is not a video")  # corrupt
    with av.open(str(root / "videos" / "count_0000.mp4"), mode="w") as c:  # a valid container without frames
        stream = c.add_stream("libx264", rate=8)
        stream.width = stream.height = 48
        c.start_encoding()
    return out / "checkpoints" / "last.ckpt", root


def _run(ckpt: Path, root: Path, out: Path, *extra: str):
    return evaluate(
        compose_config(
            "eval",
            [
                f"ckpt_path={ckpt}",
                "benchmark=synthetic_video",
                f"benchmark.root={root}",
                "benchmark.controls=[]",
                f"paths.output_dir={out}",
                *extra,
            ],
        )
    )


def test_video_answers_skips_and_batching(setup, tmp_path: Path) -> None:
    ckpt, root = setup
    metrics, objs = _run(ckpt, root, tmp_path / "b3", "batch_size=3")
    counts = objs["result"]["counts"]
    questions = [json.loads(line) for line in (root / "questions.jsonl").read_text().splitlines()]
    bad = {q["question_id"] for q in questions if q["video"] in ("static_0000.mp4", "count_0000.mp4")}
    assert counts["skipped"] == {
        "corrupt_video": sum(q["video"] == "static_0000.mp4" for q in questions),
        "empty_video": sum(q["video"] == "count_0000.mp4" for q in questions),
    }
    answers = [
        json.loads(line) for line in (tmp_path / "b3" / "synthetic_video_answers.jsonl").read_text().splitlines()
    ]
    assert {a["id"] for a in answers} == {q["question_id"] for q in questions} - bad
    _run(ckpt, root, tmp_path / "b1", "batch_size=1")
    assert (tmp_path / "b1" / "synthetic_video_answers.jsonl").read_text() == (
        tmp_path / "b3" / "synthetic_video_answers.jsonl"
    ).read_text()  # several videos per batch: the same greedy answers as one at a time
    model = objs["model"]
    sample = model.sample("<image>\nDid the shape move?", [[f for f in [_frame(root)] * 8]])
    per_frame = model.visual.view.total
    assert sample["visual"][0].tokens == temporal_tokens(8, per_frame, "pool") == 8 * (per_frame // 2)
    assert sample["pixel_values"].shape[0] == 8  # one view per frame, encoded as one batch


def _frame(root: Path):
    from dc.data.video import decode_video

    return decode_video(root / "videos" / "move_0000.mp4", 1).frames[0]


def test_too_many_frames_are_refused_naming_the_keys(setup, tmp_path: Path) -> None:
    ckpt, root = setup
    from dc.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"200 frames.*lower video.num_frames.*video.aggregate=pool"):
        _run(ckpt, root, tmp_path / "x", "video.num_frames=200", "video.aggregate=concat")
    with pytest.raises(ValueError, match=r"200 frames"):  # a benchmark's own count is the one checked
        _run(ckpt, root, tmp_path / "y", "benchmark.num_frames=200", "video.aggregate=concat")


def _eval_cfg(root: Path, *extra: str):
    return compose_config("eval", ["ckpt_path=x.ckpt", "benchmark=synthetic_video", f"benchmark.root={root}", *extra])


@pytest.mark.parametrize(
    ("overrides", "frames"),
    [((), 8), (("video.num_frames=3",), 3), (("video.num_frames=3", "benchmark.num_frames=5"), 5)],
)
def test_the_frame_count_comes_from_video_num_frames_unless_the_benchmark_sets_one(setup, overrides, frames) -> None:
    from dc.eval.runner import _benchmark, record_visuals, video_frames

    _, root = setup
    cfg = _eval_cfg(root, *overrides)
    record = next(r for r in _benchmark(cfg).load()[0] if "move_0000" in str(r.video))
    assert video_frames(record, 8) == frames
    # what is decoded: as many frames as the count (the clip has more), independently of the runner's default
    assert len(record_visuals(record, num_frames=8)[0]) == frames


def test_a_stock_llava_model_is_refused_videos_before_it_loads(setup, tmp_path: Path) -> None:
    """`model=hf` has no video path: a video benchmark is refused up front (not answered as 0 % with every
    question skipped), before the model directory is even read (here it does not exist)."""
    from dc.utils.errors import ConfigError

    _, root = setup
    cfg = compose_config(
        "eval",
        [
            "model=hf",
            f"model.path={tmp_path / 'no_such_model'}",
            "benchmark=synthetic_video",
            f"benchmark.root={root}",
            f"paths.output_dir={tmp_path / 'out'}",
        ],
    )
    with pytest.raises(ConfigError, match=r"benchmark=synthetic_video has videos.*has no video path"):
        evaluate(cfg)
    assert not list((tmp_path / "out").glob("*answers*"))
