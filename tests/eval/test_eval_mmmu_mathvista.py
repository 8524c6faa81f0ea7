"""MMMU and MathVista on tiny fixtures; parsing outcomes and accuracies worked out by hand."""

from __future__ import annotations

import json

import pytest

from dc.eval.benchmarks.mathvista_extract import levenshtein, normalize_extraction, rule_extract
from dc.eval.benchmarks.mmmu_parse import judge_open, parse_multi_choice, parse_open

from dc_testing import get_benchmark

MC_SUFFIX = "Answer with the option's letter from the given choices directly."
SHORT = "Answer the question using a single word or phrase."


# ---------------------------------------------------------------- MMMU parsing
def test_mmmu_multi_choice_parsing():
    opts = {"A": "red car", "B": "blue bike", "C": "green bus"}
    letters = list(opts)
    assert parse_multi_choice("B.", letters, opts) == "B"  # trailing '.' trimmed, then " B "
    assert parse_multi_choice("(A) is wrong, (C) is right", letters, opts) == "C"  # last bracketed one
    assert parse_multi_choice("I think the picture shows a blue bike here", letters, opts) == "B"  # option text
    assert parse_multi_choice("a blue bike", letters, opts) in letters  # <= 5 words, no letter: random pick
    # The random pick is seeded per sample: the same sample always gets the same letter.
    assert parse_multi_choice("?", letters, opts, seed="s1") == parse_multi_choice("?", letters, opts, seed="s1")


def test_mmmu_open_parsing():
    # "the final result is 3.50": shortest tail after a key phrase is "3.50" -> 3.5.
    assert parse_open("The final result is 3.50.") == [3.5]
    assert judge_open("3.5", parse_open("The final result is 3.50."))
    assert judge_open("blue", parse_open("The color is Blue."))  # tail "blue" contains gold "blue"
    assert not judge_open(["1789", "seventeen eighty-nine"], parse_open("It happened in 1790."))
    assert judge_open("1,000", parse_open("x = 1000"))  # '=' counts on the last line; 1,000 -> 1000.0


def _mmmu(files):
    samples = [
        {
            "id": "validation_Art_1",
            "question": "Which animal is shown in <image 1>?",
            "options": "['cat', 'dog', 'bird']",
            "answer": "B",
            "question_type": "multiple-choice",
            "image_1": "images/a1.png",
        },
        {
            "id": "validation_Accounting_2",
            "question": "Pick.",
            "options": ["1", "2", "3", "4"],
            "answer": "C",
            "question_type": "multiple-choice",
            "image_1": "images/a2.png",
        },
        {
            "id": "validation_Physics_3",
            "question": "Vehicle?",
            "options": ["red car", "blue bike"],
            "answer": "A",
            "question_type": "multiple-choice",
            "image_1": "images/a3.png",
        },
        {
            "id": "validation_Math_4",
            "question": "Solve for x.",
            "options": "[]",
            "answer": "3.5",
            "question_type": "open",
            "image_1": "images/a4.png",
        },
        {
            "id": "validation_History_5",
            "question": "Which year?",
            "options": [],
            "answer": "['1789', 'seventeen eighty-nine']",
            "question_type": "open",
            "image_1": "images/a5.png",
        },
        {
            "id": "validation_Music_6",
            "question": "Colour?",
            "options": [],
            "answer": "blue",
            "question_type": "open",
            "image_1": "images/a6.png",
            "image_2": "images/a6b.png",
        },
    ]
    for s in samples:
        files.image(f"mmmu/{s['image_1']}")
    files.jsonl("mmmu/validation.jsonl", samples, raw_lines=["{broken"])
    return get_benchmark("mmmu", root=files.root / "mmmu")


def test_mmmu_prompts_and_accuracy(files):
    bench = _mmmu(files)
    records, skips = bench.load()
    assert len(records) == 6 and [s.reason for s in skips] == ["malformed_line"]
    assert records[0].prompt == (
        f"<image>\nWhich animal is shown in <image 1>?\n(A) cat\n(B) dog\n(C) bird\n\n{MC_SUFFIX}"
    )
    assert records[3].prompt == f"<image>\nSolve for x.\n{SHORT}"
    assert records[0].max_new_tokens == 128 and bench.generation_kwargs["num_beams"] == 5
    assert records[5].meta["n_images"] == 2 and records[5].image == files.root / "mmmu/images/a6.png"
    answers = {
        "validation_Art_1": "(B) dog",
        "validation_Accounting_2": "(A) is wrong, (C) is right",
        "validation_Physics_3": "I think the picture shows a blue bike here",  # -> B, gold A: wrong
        "validation_Math_4": "The final result is 3.50",
        "validation_History_5": "It happened in 1790.",
        "validation_Music_6": "The color is Blue.",
    }
    res = bench.score(records, answers)
    # right: Art_1, Accounting_2, Math_4, Music_6; wrong: Physics_3, History_5.
    assert res["metrics"]["accuracy"] == pytest.approx(100 * 4 / 6)
    assert res["breakdown"]["question_type"] == pytest.approx({"multiple-choice": 200 / 3, "open": 200 / 3})
    assert res["breakdown"]["discipline"] == pytest.approx(
        {"Art and Design": 100.0, "Business": 100.0, "Humanities and Social Science": 0.0, "Science": 50.0}
    )


def _option_image_samples(files):
    files.jsonl(
        "mmmu/validation.jsonl",
        [
            {
                "id": "validation_Design_9",
                "question": "Which one?",
                "options": ["<img='a.png'>", "<img='b.png'>"],
                "answer": "A",
                "question_type": "multiple-choice",
                "image_1": "images/x.png",
            },
            {
                "id": "validation_Design_10",
                "question": "Which year?",
                "options": "['<img=\\'c.png\\'>', '<img=\\'d.png\\'>']",
                "answer": "1999",
                "question_type": "open",
                "image_1": "images/x.png",
            },
            {
                "id": "validation_Art_11",
                "question": "Which?",
                "options": ["p", "q"],
                "answer": "B",
                "question_type": "multiple-choice",
            },
        ],
    )  # no image_1 at all
    files.image("mmmu/images/x.png")


def test_mmmu_option_images_are_generated_with_image_1(files):
    # Official pipeline: the option-image branch is never taken, so these get image_1 and a normal score.
    _option_image_samples(files)
    bench = get_benchmark("mmmu", root=files.root / "mmmu")
    mc, open_q, no_image = bench.load()[0]
    assert mc.image == files.root / "mmmu/images/x.png" and mc.prompt.startswith(
        "<image>\nWhich one?\n(A) <img='a.png'>"
    )
    assert "answer_override" not in mc.meta and "answer_override" not in open_q.meta
    assert bench.is_correct(mc, "A") and not bench.is_correct(mc, "B")
    assert bench.is_correct(open_q, "It was 1999.") and not bench.is_correct(open_q, "2001")
    # Without image_1 the official script cannot generate: random letter (MC), like the branch.
    assert no_image.image is None and no_image.meta["answer_override"] == "random_choice"
    assert bench.is_correct(no_image, "A") == bench.is_correct(no_image, "B")
    res = bench.score([mc, open_q], {mc.id: "(A)", open_q.id: "1999"}, skips=[])
    assert res["metrics"]["accuracy"] == pytest.approx(100.0)
    assert res["options"] == {"option_image_rule": "official"}


def test_mmmu_script_branch_option_skips_generation(files):
    _option_image_samples(files)
    bench = get_benchmark("mmmu", root=files.root / "mmmu", option_image_rule="script_branch")
    mc, open_q, _ = bench.load()[0]
    assert mc.image is None and not mc.prompt.startswith("<image>")
    assert mc.meta["answer_override"] == "random_choice" and open_q.meta["answer_override"] == "invalid"
    # The model's text is ignored: a random letter (MC) / the invalid string (open, always wrong).
    assert bench.is_correct(mc, "A") == bench.is_correct(mc, "B")
    assert not bench.is_correct(open_q, "1999")
    assert bench.score([mc, open_q], {}, skips=[])["options"] == {"option_image_rule": "script_branch"}


# ---------------------------------------------------------------- MathVista
PROBLEMS = {
    "1": {
        "question": "How many cubes?",
        "image": "images/1.jpg",
        "choices": ["3", "4", "5"],
        "unit": None,
        "precision": None,
        "answer": "4",
        "question_type": "multi_choice",
        "answer_type": "text",
        "metadata": {"task": "math word problem"},
    },
    "2": {
        "question": "How many apples?",
        "image": "images/2.jpg",
        "choices": None,
        "unit": None,
        "precision": None,
        "answer": "12",
        "question_type": "free_form",
        "answer_type": "integer",
        "metadata": {"task": "math word problem", "skills": ["arithmetic reasoning"]},
    },
    "3": {
        "question": "What is y?",
        "image": "images/3.jpg",
        "choices": None,
        "unit": None,
        "precision": 1.0,
        "answer": "2.5",
        "question_type": "free_form",
        "answer_type": "float",
        "metadata": {},
    },
    "4": {
        "question": "What is x?",
        "image": "images/4.jpg",
        "choices": None,
        "unit": "cm",
        "precision": 2.0,
        "answer": "1.33",
        "question_type": "free_form",
        "answer_type": "float",
        "metadata": {},
    },
    "5": {
        "question": "Which color?",
        "image": "images/5.jpg",
        "choices": ["red", "green"],
        "unit": None,
        "precision": None,
        "answer": "green",
        "question_type": "multi_choice",
        "answer_type": "text",
        "metadata": {},
    },
    "6": {
        "question": "List them.",
        "image": "images/6.jpg",
        "choices": None,
        "unit": None,
        "precision": None,
        "answer": "[1, 2, 3]",
        "question_type": "free_form",
        "answer_type": "list",
        "metadata": {},
    },
}
MV_ANSWERS = {
    "1": "The answer is (B).",
    "2": "There are 12 apples, so the answer is 12.",
    "3": "2.50",
    "4": "It is about 1.3",
    "5": "gren",
    "6": "The list is [1, 2, 3].",
}


def _mathvista(files, **options):
    files.json("mathvista/annot_testmini.json", PROBLEMS)
    for pid in PROBLEMS:
        files.image(f"mathvista/images/{pid}.jpg")
    return get_benchmark("mathvista", root=files.root / "mathvista", **options)


def test_mathvista_extraction_rules():
    # gren -> green: insert "e"; gren -> red: delete "g", substitute n -> d.
    assert levenshtein("gren", "green") == 1 and levenshtein("gren", "red") == 2
    p = PROBLEMS["5"]
    assert normalize_extraction(rule_extract("gren", p), p) == "green"  # closest choice
    assert normalize_extraction("(A)", p) == "red"
    assert normalize_extraction(rule_extract("The value is 3.14159", PROBLEMS["4"]), PROBLEMS["4"]) == "3.14"


def test_mathvista_query_and_accuracy(files):
    bench = _mathvista(files)
    records, _ = bench.load()
    assert records[0].prompt == (
        "<image>\nHint: Please answer the question and provide the correct option letter, "
        "e.g., A, B, C, D, at the end.\nQuestion: How many cubes?\nChoices:\n(A) 3\n(B) 4\n(C) 5"
    )
    assert records[3].prompt == (
        "<image>\nHint: Please answer the question requiring a floating-point number with two "
        "decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.\n"
        "Question: What is x? (Unit: cm)"
    )
    assert records[0].max_new_tokens == 1024
    res = bench.score(records, MV_ANSWERS)
    # right: 1 ("(B)" -> "4"), 2 (last number 12), 3 (2.50 -> 2.5), 5 ("gren" -> "green"), 6 (list);
    # wrong: 4 ("1.3" != "1.33"). No judge: reported under its own name, never as "accuracy".
    assert res["metrics"] == pytest.approx({"accuracy_rule_based": 100 * 5 / 6})
    assert res["main_metric"] == "accuracy_rule_based" and res["options"] == {"answer_extraction": "rule_based"}
    assert res["breakdown"]["answer_type"] == pytest.approx(
        {"float": 50.0, "integer": 100.0, "list": 100.0, "text": 100.0}
    )
    assert res["breakdown"]["question_type"] == pytest.approx({"free_form": 75.0, "multi_choice": 100.0})


def test_mathvista_judge_replies_file(files, tmp_path):
    # Judge replies for every answer the quick checks leave open (all but 3): "accuracy".
    replies = tmp_path / "replies.jsonl"
    judged = {"1": "B", "2": "12", "4": "1.33", "5": "green", "6": "[1, 2, 3]"}
    replies.write_text("".join(json.dumps({"custom_id": k, "content": v}) + "\n" for k, v in judged.items()))
    bench = _mathvista(files, judge_responses=str(replies))
    records, _ = bench.load()
    res = bench.score(records, MV_ANSWERS)
    assert res["metrics"] == pytest.approx({"accuracy": 100.0}) and res["main_metric"] == "accuracy"
    assert "'judge': 5" in res["notes"][0] and res["options"] == {"answer_extraction": "judge"}


def test_mathvista_partial_judge_replies_stay_rule_based(files, tmp_path):
    # A reply for problem 4 only: it now counts as right (6/6), but 4 answers were rule-extracted.
    replies = tmp_path / "replies.jsonl"
    replies.write_text(json.dumps({"custom_id": "4", "content": "1.33"}) + "\n")
    bench = _mathvista(files, judge_responses=str(replies))
    records, _ = bench.load()
    res = bench.score(records, MV_ANSWERS)
    assert res["metrics"] == pytest.approx({"accuracy_rule_based": 100.0})
    assert "'judge': 1" in res["notes"][0] and "'rule': 4" in res["notes"][0]
