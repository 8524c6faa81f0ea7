"""GQA, VQAv2 and TextVQA on tiny fixtures in their real file formats; scores worked out by hand."""

from __future__ import annotations

import json

import pytest

from dc_testing import get_benchmark

SUFFIX = "Answer the question using a single word or phrase."


# ---------------------------------------------------------------- GQA
def _gqa(files):
    qs = [
        ("q1", "Is it overcast?", "yes", "verify", "attr"),
        ("q2", "Which side is the cup on?", "left", "query", "rel"),
        ("q3", "What is the brown object?", "table", "query", "obj"),
        ("q4", "Is the man on the bike?", "no", "verify", "rel"),
        ("q5", "What color is the wall?", "white", "query", "attr"),
        ("q6", "Is it sunny?", "yes", "verify", "attr"),
    ]
    rows = []
    for i, (qid, q, _, _, _) in enumerate(qs):
        text = q if qid == "q2" else f"{q}\n{SUFFIX}"  # q2 lacks the suffix: the loader must add it
        rows.append({"question_id": qid, "image": f"n{i}.jpg", "text": text, "category": "default"})
        if qid != "q6":  # q6's image is missing
            files.image(f"gqa/data/images/n{i}.jpg")
    files.jsonl("gqa/llava_gqa_testdev_balanced.jsonl", rows, raw_lines=['{"question_id": "q7", "image"'])
    files.json(
        "gqa/data/testdev_balanced_questions.json",
        {qid: {"question": q, "answer": a, "types": {"structural": s, "semantic": m}} for qid, q, a, s, m in qs},
    )
    return get_benchmark("gqa", root=files.root / "gqa")


def test_gqa_load_and_score(files, tmp_path):
    bench = _gqa(files)
    records, skips = bench.load()
    assert [r.id for r in records] == ["q1", "q2", "q3", "q4", "q5"]
    assert sorted(s.reason for s in skips) == ["malformed_line", "missing_image"]
    assert records[0].prompt == f"<image>\nIs it overcast?\n{SUFFIX}"
    assert records[1].prompt == f"<image>\nWhich side is the cup on?\n{SUFFIX}"
    assert records[0].image == files.root / "gqa/data/images/n0.jpg" and records[0].max_new_tokens == 128

    # q1 "Yes." -> "yes" ok; q2 "Left" ok; q3 "chair" wrong; q4 "no." ok; q5 unanswered (wrong).
    answers = {"q1": "Yes.", "q2": "Left", "q3": "chair", "q4": "no."}
    res = bench.score(records, answers)
    assert res["metrics"]["accuracy"] == pytest.approx(100 * 3 / 5)
    assert res["breakdown"]["structural"] == pytest.approx(
        {"verify": 100.0, "query": 100 / 3}
    )  # q1,q4 | q2 of q2,q3,q5
    assert res["breakdown"]["semantic"] == pytest.approx({"attr": 50.0, "obj": 0.0, "rel": 100.0})
    assert res["counts"] == {
        "records": 5,
        "answered": 4,
        "missing": 1,
        "skipped": {"malformed_line": 1, "missing_image": 1},
        "skipped_total": 2,
    }

    [path] = bench.write_submission(records, answers, tmp_path / "sub")
    preds = json.loads(path.read_text())
    assert preds[0] == {"questionId": "q1", "prediction": "yes"} and preds[4] == {"questionId": "q5", "prediction": ""}


# ---------------------------------------------------------------- VQAv2
def test_vqav2_val_local_accuracy(files):
    questions = [
        {"question_id": 11, "image_id": 1, "question": "How many dogs?"},
        {"question_id": 12, "image_id": 1, "question": "Is it day?"},
        {"question_id": 13, "image_id": 2, "question": "What color?"},
        {"question_id": 14, "image_id": 3, "question": "Missing image?"},
    ]
    gts = {
        11: (["2"] * 3 + ["3"] * 7, "number"),
        12: (["yes"] * 10, "yes/no"),
        13: (["red"] + ["blue"] * 9, "other"),
        14: (["x"] * 10, "other"),
    }
    files.json("vqav2/v2_OpenEnded_mscoco_val2014_questions.json", {"questions": questions})
    files.json(
        "vqav2/v2_mscoco_val2014_annotations.json",
        {
            "annotations": [
                {
                    "question_id": q,
                    "answer_type": t,
                    "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(ans)],
                }
                for q, (ans, t) in gts.items()
            ]
        },
    )
    files.image("vqav2/val2014/COCO_val2014_000000000001.jpg")
    files.image("vqav2/val2014/COCO_val2014_000000000002.jpg")
    bench = get_benchmark("vqav2", root=files.root / "vqav2", split="val")
    records, skips = bench.load()
    assert [r.id for r in records] == ["11", "12", "13"] and [s.reason for s in skips] == ["missing_image"]
    assert records[0].prompt == f"<image>\nHow many dogs?\n{SUFFIX}"
    res = bench.score(records, {"11": "Two.", "12": "yes", "13": "red"})
    # 11: 3 of 10 match -> 0.9; 12: all match -> 1.0; 13: 1 of 10 -> (9 * 1/3) / 10 = 0.3.
    assert res["metrics"]["accuracy"] == pytest.approx(100 * (0.9 + 1.0 + 0.3) / 3)
    assert res["breakdown"]["answer_type"] == pytest.approx({"number": 90.0, "yes/no": 100.0, "other": 30.0})


def test_vqav2_scoring_rule_official_vs_m4c(files):
    # q21: ten identical "t-shirt"; q22: mixed possessive answers (see test_eval_vqa_normalize).
    files.json(
        "vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
        {
            "questions": [
                {"question_id": 21, "image_id": 1, "question": "What is he wearing?"},
                {"question_id": 22, "image_id": 1, "question": "Whose hat?"},
            ]
        },
    )
    files.json(
        "vqav2/v2_mscoco_val2014_annotations.json",
        {
            "annotations": [
                {
                    "question_id": 21,
                    "answer_type": "other",
                    "answers": [{"answer": "t-shirt", "answer_id": i} for i in range(10)],
                },
                {
                    "question_id": 22,
                    "answer_type": "other",
                    "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(["man's"] * 3 + ["man"] * 7)],
                },
            ]
        },
    )
    files.image("vqav2/val2014/COCO_val2014_000000000001.jpg")
    answers = {"21": "T-shirt", "22": "man's"}
    official = get_benchmark("vqav2", root=files.root / "vqav2", split="val")
    records, _ = official.load()
    res = official.score(records, answers)
    # Official: 21 -> "t shirt" vs raw "t-shirt": 0; 22 -> "man 's" vs "man's"/"man": 0.
    assert res["metrics"]["accuracy"] == 0.0
    assert res["options"] == {"scoring_rule": "official"} and "scoring rule: official" in res["notes"]
    m4c = get_benchmark("vqav2", root=files.root / "vqav2", split="val", scoring_rule="m4c")
    res = m4c.score(records, answers)
    # m4c: 21 -> 1.0; 22 -> 3 of 10 match -> 0.9.
    assert res["metrics"]["accuracy"] == pytest.approx(100 * (1.0 + 0.9) / 2)
    assert res["options"] == {"scoring_rule": "m4c"}
    with pytest.raises(ValueError, match="scoring_rule must be one of"):
        get_benchmark("vqav2", root=files.root / "vqav2", scoring_rule="lenient")


def test_vqav2_testdev_submission_padded(files, tmp_path):
    rows = [
        {"question_id": 101, "image": "COCO_test2015_000000000009.jpg", "text": f"How many?\n{SUFFIX}"},
        {"question_id": 102, "image": "COCO_test2015_000000000009.jpg", "text": f"What is it?\n{SUFFIX}"},
    ]
    files.jsonl("vqav2/llava_vqav2_mscoco_test-dev2015.jsonl", rows)
    files.jsonl("vqav2/llava_vqav2_mscoco_test2015.jsonl", rows + [{"question_id": 103, "image": "x.jpg", "text": "?"}])
    files.image("vqav2/test2015/COCO_test2015_000000000009.jpg")
    bench = get_benchmark("vqav2", root=files.root / "vqav2")
    records, _ = bench.load()
    answers = {"101": "Two dogs.", "102": "A Cat"}
    res = bench.score(records, answers)
    assert res["status"] == "no_ground_truth" and res["metrics"] == {}
    [path] = bench.write_submission(records, answers, tmp_path)
    assert json.loads(path.read_text()) == [
        {"question_id": 101, "answer": "2 dogs"},
        {"question_id": 102, "answer": "cat"},
        {"question_id": 103, "answer": ""},
    ]


def test_vqav2_rejects_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="test-dev"):
        get_benchmark("vqav2", root=tmp_path, split="test")


# ---------------------------------------------------------------- TextVQA
def _textvqa(files, **options):
    ocr = "Reference OCR token: dakota, digital, 10"
    files.jsonl(
        "textvqa/llava_textvqa_val_v051_ocr.jsonl",
        [
            {"question_id": "img1", "image": "img1.jpg", "text": f"what brand is this?\n{ocr}\n{SUFFIX}"},
            {"question_id": "img1", "image": "img1.jpg", "text": f"what number is shown?\n{ocr}\n{SUFFIX}"},
        ],
    )
    files.image("textvqa/train_images/img1.jpg")
    files.json(
        "textvqa/TextVQA_0.5.1_val.json",
        {
            "data": [
                {
                    "image_id": "img1",
                    "question_id": 5,
                    "question": "What brand is this?",
                    "answers": ["dakota"] * 2 + ["dakota digital"] * 8,
                },
                {
                    "image_id": "img1",
                    "question_id": 6,
                    "question": "what number is shown?",
                    "answers": ["ten"] * 2 + ["10"] * 2 + ["11"] * 6,
                },
            ]
        },
    )
    return get_benchmark("textvqa", root=files.root / "textvqa", **options)


def test_textvqa_ocr_prompt_and_accuracy(files):
    bench = _textvqa(files)
    records, skips = bench.load()
    assert [r.id for r in records] == ["img1", "img1#1"] and not skips  # LLaVA reuses the image id
    assert records[0].prompt == (f"<image>\nwhat brand is this?\nReference OCR token: dakota, digital, 10\n{SUFFIX}")
    res = bench.score(records, {"img1": "Dakota", "img1#1": "10"})
    # "dakota" matches 2 of 10: (2 * 1/3 + 8 * 2/3) / 10 = 0.6.  "10" matches 4 ("ten" -> "10"): 1.0.
    assert res["metrics"]["accuracy"] == pytest.approx(100 * (0.6 + 1.0) / 2)


def test_textvqa_without_ocr_tokens(files):
    records, _ = _textvqa(files, ocr=False).load()
    assert records[1].prompt == f"<image>\nwhat number is shown?\n{SUFFIX}"
