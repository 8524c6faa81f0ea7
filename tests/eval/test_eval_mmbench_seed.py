"""MMBench (circular vs plain) and SEED-Bench on tiny fixtures; scores worked out by hand."""

from __future__ import annotations

import base64
import csv
import json

import pytest

from dc.eval.benchmarks.choices import extract_letter, vlmevalkit_match

from dc_testing import get_benchmark

IMG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
COLS = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "image",
    "source",
    "l2-category",
    "comment",
    "split",
]


def write_tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")  # quotes cells with newlines, as pandas does
        w.writerow(COLS)
        for r in rows:
            w.writerow([r.get(c, "nan") for c in COLS])


def test_vlmevalkit_match_mid_2024_rules():
    opts = {"A": "cat", "B": "dog", "C": "bird"}
    assert vlmevalkit_match("B", opts) == "B"
    assert vlmevalkit_match("(C) bird", opts) == "C"  # "(" and ")" become spaces: one letter token
    assert vlmevalkit_match("The answer is B.", opts) == "B"
    assert vlmevalkit_match("A or B", opts) is None  # two letters, and no option text either
    assert vlmevalkit_match("a dog", opts) == "B"  # no capital letter token: option text
    assert vlmevalkit_match("D", opts) is None  # not one of this question's letters
    # Two letter tokens: no letter; the option-text step finds nothing -> None (the lenient rule says B).
    assert vlmevalkit_match("B. because A is wrong", opts) is None
    assert extract_letter("B. because A is wrong", list(opts), opts) == "B"
    # A "Z" token or a refusal phrase means "refused": no option-text step (else "dog" -> B).
    assert vlmevalkit_match("Z dog", opts) is None
    assert vlmevalkit_match("Cannot determine the answer, maybe a dog", opts) is None
    # An API failure message skips the letter step: only option text counts.
    assert vlmevalkit_match("Failed to obtain answer via API: B", opts) is None
    assert vlmevalkit_match("Failed to obtain answer via API: bird", opts) == "C"


def test_vlmevalkit_match_length_limit_is_the_later_rule():
    opts = {"A": "cat", "B": "dog", "C": "bird"}  # 10 characters of option text -> limit 20
    long_answer = "I am quite sure that the animal in the picture is a dog"  # 55 characters, no letter
    assert vlmevalkit_match(long_answer, opts) == "B"  # mid-2024: no length limit
    assert vlmevalkit_match(long_answer, opts, length_limit=True) is None
    assert vlmevalkit_match("it is a dog", opts, length_limit=True) == "B"  # 11 <= 20


def test_extract_letter_rules():
    opts = {"A": "cat", "B": "dog", "C": "bird"}
    assert extract_letter("B", list(opts)) == "B"
    assert extract_letter("(C) bird", list(opts)) == "C"
    assert extract_letter("The answer is B.", list(opts)) == "B"
    assert extract_letter("A or B", list(opts)) is None  # two letters: ambiguous
    assert extract_letter("a dog", list(opts), opts) == "B"  # option text
    assert extract_letter("D", list(opts)) is None  # not a valid letter here


def test_mmbench_generated_rotations(files, tmp_path):
    rows = [
        {
            "index": 0,
            "question": "Which animal barks?",
            "A": "cat",
            "B": "dog",
            "C": "bird",
            "answer": "B",
            "category": "x",
            "image": IMG,
        },
        {
            "index": 1,
            "question": "What color is the sky?",
            "A": "blue",
            "B": "green",
            "answer": "A",
            "category": "x",
            "image": IMG,
        },
        {
            "index": 2,
            "question": "Pick four.",
            "hint": "Count carefully.\nLine two.",
            "A": "1",
            "B": "2",
            "C": "3",
            "D": "4",
            "answer": "D",
            "category": "y",
            "image": IMG,
        },
        {"index": 3, "question": "Broken image", "A": "a", "B": "b", "answer": "A", "category": "y", "image": "!!!"},
        {"index": "x", "question": "Bad index", "A": "a", "B": "b", "answer": "A", "image": IMG},
    ]
    write_tsv(files.root / "mmbench/mmbench_dev_20230712.tsv", rows)
    bench = get_benchmark("mmbench", root=files.root / "mmbench")
    records, skips = bench.load()
    ids = [r.id for r in records]
    # Rotation k of question i gets id i + k * 1_000_000 (the official convention).
    assert ids == ["0", "1000000", "2000000", "1", "1000001", "2", "1000002", "2000002", "3000002"]
    assert sorted(s.reason for s in skips) == ["bad_image_data", "malformed_line"]
    assert records[0].prompt == f"<image>\nWhich animal barks?\nA. cat\nB. dog\nC. bird\n{MC_SUFFIX}"
    # Rotation 1 shifts the option texts by one; the right letter follows "dog".
    assert records[1].prompt == f"<image>\nWhich animal barks?\nA. dog\nB. bird\nC. cat\n{MC_SUFFIX}"
    assert [r.meta["answer"] for r in records[:3]] == ["B", "A", "C"]
    assert records[5].prompt.startswith("<image>\nCount carefully.\nLine two.\nPick four.\nA. 1\n")
    assert records[0].image.read_bytes() == base64.b64decode(IMG) and records[0].max_new_tokens == 1024

    answers = {
        "0": "B",
        "1000000": "A",
        "2000000": "B",  # q0: right, right, wrong (B is "cat") -> circular fails
        "1": "A",
        "1000001": "The answer is B",  # q1: right in both rotations -> circular passes
        "2": "C",
        "1000002": "C",
        "2000002": "B",
        "3000002": "A",  # q2: first pass already wrong
    }
    res = bench.score(records, answers)
    # plain (rotation 0 only): q0 ok, q1 ok, q2 wrong -> 2/3; circular: only q1 -> 1/3.
    assert res["metrics"] == pytest.approx({"accuracy_circular": 100 / 3, "accuracy_plain": 200 / 3})
    assert res["breakdown"]["category"] == pytest.approx({"x": 50.0, "y": 0.0})
    assert res["main_metric"] == "accuracy_circular"

    tsv, jsonl = bench.write_submission(records, answers, tmp_path / "sub")
    lines = tsv.read_text().splitlines()
    assert lines[0].split("\t")[:8] == ["index", "question", "A", "B", "C", "D", "answer", "prediction"]
    assert lines[2].split("\t")[:8] == ["1000000", "Which animal barks?", "dog", "bird", "cat", "", "A", "A"]
    assert json.loads(jsonl.read_text().splitlines()[0])["prediction"] == "B"


def test_mmbench_scoring_rule_length_limit(files):
    rows = [
        {"index": 0, "question": "Which animal barks?", "A": "cat", "B": "dog", "answer": "B", "image": IMG},
        {"index": 1, "question": "Which animal meows?", "A": "cat", "B": "dog", "answer": "A", "image": IMG},
    ]
    write_tsv(files.root / "mmbench/mmbench_dev_20230712.tsv", rows)
    answers = {"0": "The animal that barks in this picture is clearly the dog", "1": "A"}
    bench = get_benchmark("mmbench", root=files.root / "mmbench", circular=False)
    records, _ = bench.load()
    res = bench.score(records, answers)
    # Default (mid-2024): the long answer's option text "dog" counts -> both right.
    assert res["metrics"]["accuracy_plain"] == pytest.approx(100.0)
    assert res["options"] == {"scoring_rule": "official"}
    limited = get_benchmark("mmbench", root=files.root / "mmbench", circular=False, scoring_rule="length_limit")
    res = limited.score(records, answers)
    # 56 characters > 2 * 6 of option text: no match -> 1 of 2.
    assert res["metrics"]["accuracy_plain"] == pytest.approx(50.0)
    assert res["options"] == {"scoring_rule": "length_limit"}


def test_mmbench_file_with_circular_copies_and_cn(files):
    rows = [
        {"index": 5, "question": "Q?", "A": "x", "B": "y", "answer": "A", "image": IMG},
        {"index": 1000005, "question": "Q?", "A": "y", "B": "x", "answer": "B", "image": IMG},
    ]
    write_tsv(files.root / "mmbench/mmbench_dev_cn_20231003.tsv", rows)
    bench = get_benchmark("mmbench", root=files.root / "mmbench", lang="cn")
    records, _ = bench.load()
    assert [r.id for r in records] == ["5", "1000005"]  # copies in the file: nothing generated
    assert records[0].prompt.endswith("\nB. y\n请直接回答选项字母。")
    res = bench.score(records, {"5": "A", "1000005": "A"})
    assert res["metrics"] == pytest.approx({"accuracy_circular": 0.0, "accuracy_plain": 100.0})
    records, _ = get_benchmark("mmbench", root=files.root / "mmbench", lang="cn", circular=False).load()
    assert [r.id for r in records] == ["5"]


# ---------------------------------------------------------------- SEED
def test_seed_letter_accuracy(files, tmp_path):
    opts = "\nA. a\nB. b\nC. c\nD. d\n" + MC_SUFFIX
    rows = [
        {"question_id": q, "image": f"SEED-Bench-image/{q}.jpg", "text": f"Question {q}?{opts}"}
        for q in ("1", "2", "4")
    ]
    rows.insert(2, {"question_id": "3", "image": "SEED-Bench-video-image/3.png", "text": f"Question 3?{opts}"})
    files.jsonl("seed_bench/llava-seed-bench.jsonl", rows)
    for r in rows:
        files.image(f"seed_bench/{r['image']}")
    files.json(
        "seed_bench/SEED-Bench.json",
        {
            "question_type": {"Scene Understanding": 1, "Instance Identity": 2},
            "questions": [
                {"question_id": "1", "answer": "A", "question_type_id": 1, "data_type": "image"},
                {"question_id": "2", "answer": "B", "question_type_id": 2, "data_type": "image"},
                {"question_id": "3", "answer": "C", "question_type_id": 1, "data_type": "video"},
                {"question_id": "4", "answer": "D", "question_type_id": 1, "data_type": "image"},
            ],
        },
    )
    bench = get_benchmark("seed", root=files.root / "seed_bench")
    records, _ = bench.load()
    assert records[0].prompt == f"<image>\nQuestion 1?{opts}"
    answers = {"1": " A\n", "2": "B.", "3": "D", "4": "(D) a cat"}
    res = bench.score(records, answers)
    # Official (exact text after model_vqa_loader's trim): only 1 is right; "B." and "(D) a cat" are not.
    assert res["metrics"] == pytest.approx({"accuracy": 25.0, "accuracy_image": 100 / 3, "accuracy_video": 0.0})
    assert res["breakdown"]["question_type"] == pytest.approx(
        {"Instance Identity": 0.0, "Scene Understanding": 100 / 3}
    )
    assert res["options"] == {"scoring_rule": "official"}
    lenient = get_benchmark("seed", root=files.root / "seed_bench", scoring_rule="letter")
    res = lenient.score(records, answers)
    # Letter rule: right 1, 2, 4 (all image); wrong: 3 (video).
    assert res["metrics"] == pytest.approx({"accuracy": 75.0, "accuracy_image": 100.0, "accuracy_video": 0.0})
    assert res["breakdown"]["question_type"] == pytest.approx(
        {"Instance Identity": 100.0, "Scene Understanding": 200 / 3}
    )
    assert res["options"] == {"scoring_rule": "letter"}
    [up] = bench.write_submission(records, answers, tmp_path)
    assert json.loads(up.read_text().splitlines()[1]) == {"question_id": "2", "prediction": "B."}
    image_only, _ = get_benchmark("seed", root=files.root / "seed_bench", data_type="image").load()
    assert [r.id for r in image_only] == ["1", "2", "4"]
