"""VQA answer processing and leave-one-out VQA accuracy, against hand-worked expectations from the
official rules (vqaEval.py, LLaVA's EvalAIAnswerProcessor / m4c evaluator)."""

from __future__ import annotations

import pytest

from dc.eval.benchmarks.vqa_eval import (
    normalize_answer,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
    vqav2_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),  # number word -> digit
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("The cat", "cat"),  # articles dropped
        ("a man an apple", "man apple"),
        ("dont", "don't"),  # apostrophe-less contraction -> written form
        ("isnt it", "isn't it"),
        ("couldnt've", "couldn't've"),
        ("well", "well"),  # an ordinary word is not a contraction
        ("Yes.", "yes"),  # trailing period removed
        ("3.5", "3.5"),  # decimal point kept
        ("3.", "3"),  # period not followed by a digit is removed
        ("1,000", "1000"),  # commas deleted
        ("red-white", "red white"),  # '-' not touching a space -> space
        ("red - white", "red white"),  # '-' touching a space -> deleted (then spaces collapse)
        ("(left)", "left"),
        ("what's", "what 's"),  # possessive split off
        ("yes!", "yes"),
        ("  Blue\n", "blue"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_punctuation_digit_comma_digit_deletes_all_punctuation() -> None:
    # "2,5-7": a digit,comma,digit group means every listed punctuation mark is deleted, not spaced.
    assert process_punctuation("2,5-7") == "257"
    assert process_punctuation("a-b") == "a b"


def test_vqa_accuracy_three_of_ten() -> None:
    # 3 humans say "2", 7 say "3"; prediction "two" -> "2".
    # Leaving out one of the 3 matching answers: 2 matches remain -> 2/3; leaving out a non-match: 3 -> 1.
    gts = ["2"] * 3 + ["3"] * 7
    expected = (3 * (2 / 3) + 7 * 1) / 10  # = 0.9
    assert vqa_accuracy("two", gts) == pytest.approx(expected)
    assert expected == pytest.approx(0.9)


def test_vqa_accuracy_one_and_two_of_ten() -> None:
    # One match: the 9 non-matching left out see 1 match (1/3); the match left out sees 0.
    assert vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx((9 * (1 / 3) + 1 * 0) / 10)  # 0.3
    # Two matches: 8 * (2/3) + 2 * (1/3), over 10 = 0.6.
    assert vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx((8 * (2 / 3) + 2 * (1 / 3)) / 10)


def test_vqa_accuracy_full_and_zero() -> None:
    assert vqa_accuracy("Yes", ["yes"] * 10) == pytest.approx(1.0)
    assert vqa_accuracy("yes", ["yes"] * 4 + ["no"] * 6) == pytest.approx(1.0)  # 4 matches: every leave-out sees >= 3
    assert vqa_accuracy("maybe", ["yes"] * 10) == 0.0
    # Normalisation applies to the ground truths too: "ten" == "10".
    assert vqa_accuracy("10", ["ten"] * 2 + ["10"] * 2 + ["11"] * 6) == pytest.approx(1.0)


# ---------------------------------------------------------------- official contraction table and period quirk
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("couldntve", "couldntve"),  # not in the published table (only "couldnt've" / "couldn'tve" are)
        ("shes", "shes"),  # the table has "she's" -> "she's" but no "shes"
        ("lets", "lets"),  # likewise only "let's"
        ("Im", "im"),  # the table's key is "Im": never matches the lower-cased word
        ("somebody'd", "somebodyd"),  # the table maps this one backwards
        ("hed", "he'd"),  # an ordinary word that the table does map
        ("twas", "'twas"),
    ],
)
def test_official_contraction_table(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_at_most_32_periods_are_stripped() -> None:
    # The official code passes re.UNICODE (= 32) as re.sub's count: the 33rd period survives.
    assert normalize_answer("yes" + "." * 32) == "yes"
    assert normalize_answer("yes" + "." * 33) == "yes."
    assert process_punctuation("a." * 33) == "a" * 32 + "a."


def test_evaluator_steps_do_not_split_possessives() -> None:
    # vqaEval.py's own steps (used on the human answers) keep "'s" attached; EvalAI splits it off.
    assert process_digit_article(process_punctuation("The man's hat")) == "man's hat"
    assert normalize_answer("The man's hat") == "man 's hat"


# ---------------------------------------------------------------- VQAv2 official evaluator vs m4c rule
def test_vqav2_identical_answers_are_not_processed() -> None:
    # Ten identical human answers: vqaEval.py processes neither side, so the prediction as LLaVA's
    # converter wrote it ("t-shirt" -> "t shirt": '-' not touching a space becomes a space) must equal
    # the raw human answer. It does not: 0. The m4c rule normalises both sides: 1.
    assert vqav2_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10) == pytest.approx(1.0)
    # Same for number words and articles: the converter writes "2" / "dog".
    assert vqav2_accuracy("two", ["two"] * 10) == 0.0
    assert vqav2_accuracy("a dog", ["a dog"] * 10) == 0.0
    assert vqa_accuracy("a dog", ["a dog"] * 10) == pytest.approx(1.0)
    # A prediction that the converter leaves equal to the human answer still matches.
    assert vqav2_accuracy("Yes.", ["yes"] * 10) == pytest.approx(1.0)


def test_vqav2_mixed_answers_are_processed_without_possessive_split() -> None:
    gts = ["man's"] * 3 + ["man"] * 7
    # Human side: punctuation + digit/article only -> "man's" stays. Prediction: the converter made
    # it "man 's", which matches nothing -> 0. Under m4c both sides are "man 's": 3 matches -> 0.9.
    assert vqav2_accuracy("man's", gts) == 0.0
    assert vqa_accuracy("man's", gts) == pytest.approx((3 * (2 / 3) + 7 * 1) / 10)
    assert vqav2_accuracy("The man", gts) == pytest.approx(1.0)  # 7 matches after "the" is dropped
    # Mixed answers: the human side gets number words mapped too ("ten" -> "10"): 4 matches -> 1.0.
    assert vqav2_accuracy("10", ["ten"] * 2 + ["10"] * 2 + ["11"] * 6) == pytest.approx(1.0)
    assert vqav2_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
