"""Generation invariants and the eval.py benchmark path end to end on a briefly trained tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from dc.eval.generate import generate_texts, prompt_sample
from dc.models.builder import build_vlm
from dc.models.visual import VisualMeta
from dc.pipeline import evaluate, train

from dc_testing import compose_config


@pytest.fixture
def vlm_and_samples(train_cfg):
    cfg = train_cfg()
    torch.manual_seed(3)
    vlm = build_vlm(cfg).eval()
    size = cfg.encoder.layout.image_size
    questions = ["What colour is the circle?", "How many shapes are there?", "Where is the red shape?", "Hi"]
    gen = torch.Generator().manual_seed(0)
    meta = VisualMeta(views=1, tokens=vlm.num_visual_tokens)
    samples = [
        prompt_sample(vlm, "<image>\n" + q, [(torch.randn(1, 3, size, size, generator=gen), meta)]) for q in questions
    ]
    samples.append(prompt_sample(vlm, "A text-only question with no image at all?", []))
    return vlm, samples


def test_batched_generation_equals_one_at_a_time(vlm_and_samples) -> None:
    vlm, samples = vlm_and_samples
    lengths = {len(s["input_ids"]) for s in samples}
    assert len(lengths) > 1  # left padding is really exercised
    batched = generate_texts(vlm, samples, batch_size=len(samples), max_new_tokens=6)
    single = [generate_texts(vlm, [s], batch_size=1, max_new_tokens=6)[0] for s in samples]
    assert batched == single
    assert any(batched)  # a random model still emits tokens, so the comparison is not between empty strings


def test_kv_cache_generation_equals_no_cache(vlm_and_samples) -> None:
    vlm, samples = vlm_and_samples
    cached = generate_texts(vlm, samples, batch_size=2, max_new_tokens=6, use_cache=True)
    uncached = generate_texts(vlm, samples, batch_size=2, max_new_tokens=6, use_cache=False)
    assert cached == uncached


def _to_gqa(synthetic_root: Path, gqa_root: Path, n: int) -> list[dict]:
    """Write the synthetic held-out questions in GQA's real formats (LLaVA question file + official json)."""
    records = [json.loads(line) for line in (synthetic_root / "eval.jsonl").read_text().splitlines()][:n]
    (gqa_root / "data" / "images").mkdir(parents=True)
    questions, official = [], {}
    for r in records:
        image_id = Path(r["image"]).stem
        with Image.open(synthetic_root / "images" / r["image"]) as img:
            img.save(gqa_root / "data" / "images" / f"{image_id}.png")
        questions.append({"question_id": r["question_id"], "image": f"{image_id}.png", "text": r["text"]})
        official[r["question_id"]] = {"answer": r["answer"], "types": {"structural": r["category"], "semantic": "obj"}}
    (gqa_root / "llava_gqa_testdev_balanced.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (gqa_root / "data" / "testdev_balanced_questions.json").write_text(json.dumps(official))
    return records


def test_train_then_eval_gqa_format_with_resume_and_bad_image(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg("trainer.max_steps=2")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    synthetic_root = Path(cfg.data.image_folder).parent
    gqa_root = tmp_path / "gqa"
    records = _to_gqa(synthetic_root, gqa_root, n=8)
    # plant a corrupt image: the questions about it are skipped and counted, the run goes on
    questions = [json.loads(line) for line in (gqa_root / "llava_gqa_testdev_balanced.jsonl").read_text().splitlines()]
    bad = questions[-1]
    (gqa_root / "data" / "images" / bad["image"]).write_bytes(b"not an image")
    bad_ids = {q["question_id"] for q in questions if q["image"] == bad["image"]}
    n_good = len(questions) - len(bad_ids)
    assert n_good > 0
    out = tmp_path / "eval"
    overrides = [
        f"ckpt_path={ckpt}",
        "benchmark=gqa",
        f"benchmark.root={gqa_root}",
        f"paths.output_dir={out}",
        "batch_size=3",
    ]
    metrics, objs = evaluate(compose_config("eval", overrides))
    answers = [json.loads(line) for line in (out / "gqa_answers.jsonl").read_text().splitlines()]
    assert len(answers) == n_good and not bad_ids & {a["id"] for a in answers}
    # accuracy recomputed here from the answers file and the gold answers
    gold = {r["question_id"]: r["answer"] for r in records}
    hits = sum(a["text"].strip().rstrip(".").lower() == gold[a["id"]] for a in answers)
    assert metrics["gqa/accuracy"] == pytest.approx(100.0 * hits / n_good)
    assert objs["result"]["counts"]["skipped"] == {"unreadable_input": len(bad_ids)}
    assert (out / "gqa_results.md").read_text().count("gqa") >= 1
    # resume: a second run answers nothing new and gives the same score
    before = (out / "gqa_answers.jsonl").read_text()
    metrics2, _ = evaluate(compose_config("eval", overrides))
    assert (out / "gqa_answers.jsonl").read_text() == before
    assert metrics2["gqa/accuracy"] == metrics["gqa/accuracy"]


def test_eval_metrics_go_to_wandb_offline(train_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`wandb.enabled=true`: the metrics land in an offline wandb run's summary, and the run is finished."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = train_cfg("trainer.max_steps=1")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    root = Path(cfg.data.image_folder).parent
    overrides = [
        f"ckpt_path={ckpt}",
        f"paths.output_dir={out}",
        "limit=4",
        "wandb.enabled=true",
        "benchmark.blank_control=false",
        f"benchmark.root={root}",
    ]
    metrics, objs = evaluate(compose_config("eval", overrides))
    assert wandb.run is None  # finished
    assert objs["wandb_summary"]["synthetic/accuracy"] == metrics["synthetic/accuracy"]
    assert len(list(out.glob("wandb/offline-run-*/run-*.wandb"))) == 1  # an offline run, ready for `wandb sync`
