"""eval.py at scale on CPU: 2 processes give exactly the answers and scores of 1; a run killed midway resumes with
nothing lost or duplicated; answers from another checkpoint are refused; the sweep metric is returned."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dc.eval.parallel import StaleAnswersError
from dc.pipeline import evaluate, optimized_metric, train

from dc_testing import ROOT, compose_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, Path]:
    """A 2-step tiny checkpoint and the synthetic folder it was trained on."""
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
            "trainer.max_steps=2",
        ],
    )
    train(cfg)
    return out / "checkpoints" / "last.ckpt", Path(cfg.data.image_folder).parent


def _eval_py(args: list[str], out: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "eval.py", *args, f"hydra.run.dir={out}", "runtime.accelerator=cpu"]
    env = {
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_equal_one_and_a_killed_run_resumes(trained, tmp_path: Path) -> None:
    ckpt, root = trained
    common = [f"ckpt_path={ckpt}", f"benchmark.root={root}", "batch_size=3"]
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    r1 = _eval_py([*common, "runtime.devices=1"], one)
    assert r1.returncode == 0, r1.stderr[-3000:]
    summary = next(line for line in r1.stdout.splitlines() if line.startswith("synthetic: ") and "answered" in line)
    assert summary in (one / "eval.log").read_text()  # the run's log keeps what the console showed
    r2 = _eval_py([*common, "runtime.devices=2"], two)
    assert r2.returncode == 0, r2.stderr[-3000:]
    for name in ("synthetic_answers.jsonl", "synthetic_blank_answers.jsonl"):
        assert (one / name).read_text() == (two / name).read_text()  # same answers, same order, byte for byte
    res1 = json.loads((one / "synthetic_results.json").read_text())["results"]["synthetic"]
    res2 = json.loads((two / "synthetic_results.json").read_text())["results"]["synthetic"]
    assert res1["metrics"] == res2["metrics"]

    # killed (SIGKILL on both ranks) after 3 answers each, then resumed on ONE process: nothing lost or duplicated
    crashed = _eval_py([*common, "runtime.devices=2", "crash_after_answers=3"], killed)
    assert crashed.returncode != 0
    parts = sorted((killed / ".parts").glob("synthetic_answers.rank*.jsonl"))
    assert sum(len(_lines(p)) for p in parts) >= 3 and not (killed / "synthetic_answers.jsonl").exists()
    resumed = _eval_py([*common, "runtime.devices=1"], killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    answers = _lines(killed / "synthetic_answers.jsonl")
    assert len(answers) == len({a["id"] for a in answers}) == len(_lines(one / "synthetic_answers.jsonl"))
    assert (killed / "synthetic_answers.jsonl").read_text() == (one / "synthetic_answers.jsonl").read_text()
    assert not (killed / ".parts").exists()


def test_answers_from_another_checkpoint_are_refused(trained, tmp_path: Path, data_dir: Path) -> None:
    ckpt, root = trained
    out = tmp_path / "eval"
    base = [
        f"benchmark.root={root}",
        f"paths.output_dir={out}",
        "limit=4",
        "benchmark.blank_control=false",
        "optimized_metric=synthetic/accuracy",
    ]
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", *base])
    metrics, _ = evaluate(cfg)
    assert optimized_metric(cfg, metrics) == metrics["synthetic/accuracy"]
    other = tmp_path / "other.ckpt"
    other.write_bytes(ckpt.read_bytes() + b"")  # same weights, another file: a different checkpoint
    with pytest.raises(StaleAnswersError, match="synthetic_answers.jsonl.*checkpoint"):
        evaluate(compose_config("eval", [f"ckpt_path={other}", *base]))
    evaluate(compose_config("eval", [f"ckpt_path={other}", *base, "overwrite=true"]))  # told to start fresh
    fingerprint = json.loads((out / "synthetic_answers.meta.json").read_text())
    assert fingerprint["model"]["checkpoint"]["path"] == str(other.resolve())


def test_the_same_folder_spelled_differently_keeps_the_answers(trained, tmp_path: Path) -> None:
    """`data/x`, `./data/x` and `data/./x` are one folder: the answers on disk are reused, not refused as stale (also
    when they were recorded with the path as typed, before paths were resolved)."""
    ckpt, root = trained
    out = tmp_path / "eval"
    base = [f"ckpt_path={ckpt}", f"paths.output_dir={out}", "limit=4", "benchmark.blank_control=false"]
    first, _ = evaluate(compose_config("eval", [*base, f"benchmark.root={root}"]))
    meta = out / "synthetic_answers.meta.json"
    assert json.loads(meta.read_text())["benchmark"]["root"] == str(root.resolve())
    same = f"{root.parent}/./{root.name}"
    again, _ = evaluate(compose_config("eval", [*base, f"benchmark.root={same}"]))
    assert again == first
    recorded = json.loads(meta.read_text())
    recorded["benchmark"]["root"] = f"{root}/."  # as an earlier version wrote it: the path as typed
    meta.write_text(json.dumps(recorded))
    assert evaluate(compose_config("eval", [*base, f"benchmark.root={root}"]))[0] == first
    other = tmp_path / "other_root"
    shutil.copytree(root, other)  # the same questions in another folder: another benchmark for the answers
    with pytest.raises(StaleAnswersError, match="benchmark.root"):
        evaluate(compose_config("eval", [*base, f"benchmark.root={other}"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("limit=0", r"limit=0: expected a positive integer \(questions to answer\) or null"),
        ("limit=-3", r"limit=-3: expected a positive integer"),
        ("limit=abc", r"limit='abc': expected an integer"),
        ("batch_size=0", r"batch_size=0: expected a positive integer"),
        ("batch_size=two", r"batch_size='two': expected an integer"),
        ("video.num_frames=0", r"video.num_frames=0: expected a positive integer"),
        ("video.num_frames=abc", r"video.num_frames='abc': expected an integer"),
        ("benchmark=msvd_qa benchmark.num_frames=-1", r"benchmark.num_frames=-1: expected a positive integer"),
        ("runtime.devices=abc", r"runtime.devices='abc': expected an integer"),
        ("runtime.devices=0", r"runtime.devices=0: expected auto or a positive integer"),
        ("runtime.num_nodes=0", r"runtime.num_nodes=0: expected a positive integer"),
        ("model=hf", r"model.path must be set"),
        ("paths.data_dir=${oc.env:DC_TEST_UNSET}", r"paths.data_dir=.*Environment variable 'DC_TEST_UNSET' not found"),
    ],
)
def test_eval_options_are_checked_first(tmp_path: Path, override: str, message: str) -> None:
    from dc.utils.errors import ConfigError

    overrides = [f"ckpt_path={tmp_path / 'none.ckpt'}", f"paths.output_dir={tmp_path}", *override.split()]
    cfg = compose_config("eval", overrides)
    with pytest.raises(ConfigError, match=message):
        evaluate(cfg)


def test_a_missing_benchmark_file_is_named_before_the_model_loads(tmp_path: Path) -> None:
    """The model (here: a checkpoint that does not exist) is read only after the benchmark's files are found."""
    cfg = compose_config(
        "eval",
        [
            f"ckpt_path={tmp_path / 'none.ckpt'}",
            "benchmark=pope",
            f"benchmark.root={tmp_path}",
            f"paths.output_dir={tmp_path}",
        ],
    )
    with pytest.raises(FileNotFoundError, match=r"pope: required file .* not found"):
        evaluate(cfg)


def _tiny_mme(root: Path, image: Path) -> Path:
    """An MME folder (LLaVA question file + release layout) with one image and its yes/no question pair."""
    release = root / "MME_Benchmark_release_version" / "existence"
    release.mkdir(parents=True)
    shutil.copy(image, release / "e1.png")
    yes, no = "Is there a shape in this image? Please answer yes or no.", "Is there a dog? Please answer yes or no."
    (release / "e1.txt").write_text(f"{yes}\tYes\n{no}\tNo\n")
    suffix = "Answer the question using a single word or phrase."
    rows = [
        {
            "question_id": "existence/e1.png",
            "image": "existence/e1.png",
            "text": f"{q}\n{suffix}",
            "category": "existence",
        }
        for q in (yes, no)
    ]
    (root / "llava_mme.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_scoring_options_and_video_settings_keep_the_answers(trained, tmp_path: Path) -> None:
    """A scoring-only option (MME's `scoring_rule`; a judge's replies) scores the answers already given instead of
    refusing them as stale, and an image benchmark's answers do not depend on the video settings. The answers on
    disk are edited between the runs: a second run that re-answered would not keep the edit."""
    ckpt, root = trained
    mme = _tiny_mme(tmp_path / "mme", next((root / "images").glob("eval_*.png")))
    out = tmp_path / "eval"
    base = [f"ckpt_path={ckpt}", "benchmark=mme", f"benchmark.root={mme}", f"paths.output_dir={out}"]
    evaluate(compose_config("eval", base))
    answers = out / "mme_answers.jsonl"
    edited = [{**a, "text": "...Yes" if k == 0 else "No"} for k, a in enumerate(_lines(answers))]
    answers.write_text("".join(json.dumps(a) + "\n" for a in edited))
    expected_score = {"official": 50.0, "lmms_eval": 200.0}  # "...Yes" is "other" officially: 1/2 right, 0/1 image
    for rule in ("lmms_eval", "official"):
        for video in ([], ["video.aggregate=mean", "video.num_frames=4"]):
            _, info = evaluate(compose_config("eval", [*base, f"benchmark.scoring_rule={rule}", *video]))
            assert info["result"]["options"] == {"scoring_rule": rule}
            assert info["result"]["breakdown"]["subtask"]["existence"]["score"] == pytest.approx(expected_score[rule])
            assert _lines(answers) == edited  # scored, not answered again
    # an answers file recorded by an earlier version (scoring options and video settings in the fingerprint)
    meta = out / "mme_answers.meta.json"
    recorded = json.loads(meta.read_text())
    recorded["benchmark"]["scoring_rule"] = "lmms_eval"
    recorded["model"]["video"] = {"num_frames": 16, "aggregate": "mean"}
    meta.write_text(json.dumps(recorded))
    evaluate(compose_config("eval", base))
    assert _lines(answers) == edited
    with pytest.raises(StaleAnswersError, match="benchmark.question_file"):  # what the answers depend on still counts
        shutil.copy(mme / "llava_mme.jsonl", mme / "other.jsonl")
        evaluate(compose_config("eval", [*base, "benchmark.question_file=other.jsonl"]))
