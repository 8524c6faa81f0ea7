"""POPE, MME and ScienceQA-IMG on tiny fixtures; confusion matrices and scores worked out by hand."""

from __future__ import annotations

import pytest

from dc.eval.benchmarks.mme import mme_parse
from dc.eval.benchmarks.pope import pope_yes_no
from dc.eval.benchmarks.scienceqa import parse_sqa_letter

from dc_testing import get_benchmark

SUFFIX = "Answer the question using a single word or phrase."


# ---------------------------------------------------------------- POPE
def test_pope_answer_rule():
    assert pope_yes_no("Yes, there is a dog.") == "yes"
    assert pope_yes_no("No.") == "no"
    assert pope_yes_no("There is not a cat. But yes a dog") == "no"  # only the first sentence counts
    assert pope_yes_no("Yes. There is no cat") == "yes"
    assert pope_yes_no("Nope") == "yes"  # the rule matches whole words only
    assert pope_yes_no("no, none") == "no"  # the comma is removed before splitting


def test_pope_per_split_metrics(files):
    # (split, object, label, answer)
    items = [
        ("random", "dog", "yes", "Yes, there is a dog."),
        ("random", "cat", "yes", "No."),
        ("random", "car", "yes", "yes"),
        ("random", "bus", "no", "There is not a bus."),
        ("random", "cup", "no", "Yes"),
        ("random", "tie", "no", "No, there is no tie."),
        ("adversarial", "dog", "yes", "Yes."),
        ("adversarial", "cat", "no", "Yes"),
        ("adversarial", "car", "no", "I do not see one"),
        ("adversarial", "bus", "yes", "Nope"),
        ("popular", "dog", "yes", None),
    ]
    rows, labels, answers = [], {"random": [], "adversarial": [], "popular": []}, {}
    for i, (split, obj, label, ans) in enumerate(items):
        q = f"Is there a {obj} in the image?"
        rows.append(
            {"question_id": i + 1, "image": f"COCO_val2014_{i:012d}.jpg", "text": f"{q}\n{SUFFIX}", "category": split}
        )
        files.image(f"pope/val2014/COCO_val2014_{i:012d}.jpg")
        # One label file text differs from the question: the label is then taken by position.
        label_q = "Is there a cat in the imag?" if (split, obj) == ("random", "cat") else q
        labels[split].append(
            {
                "question_id": len(labels[split]) + 1,
                "image": f"COCO_val2014_{i:012d}.jpg",
                "text": label_q,
                "label": label,
            }
        )
        if ans is not None:
            answers[str(i + 1)] = ans
    files.jsonl("pope/llava_pope_test.jsonl", rows)
    for split, ls in labels.items():
        files.jsonl(f"pope/coco/coco_pope_{split}.json", ls)
    bench = get_benchmark("pope", root=files.root / "pope")
    records, skips = bench.load()
    assert len(records) == 11 and not skips
    assert records[1].meta["label"] == "yes"  # positional fallback
    res = bench.score(records, answers)
    rnd, adv = res["breakdown"]["split"]["random"], res["breakdown"]["split"]["adversarial"]
    # random: preds yes,no,yes,no,yes,no vs labels yes,yes,yes,no,no,no -> TP=2 FN=1 TN=2 FP=1.
    assert (rnd["tp"], rnd["fp"], rnd["tn"], rnd["fn"]) == (2, 1, 2, 1)
    assert rnd["accuracy"] == pytest.approx(100 * 4 / 6)
    assert rnd["precision"] == pytest.approx(100 * 2 / 3) and rnd["recall"] == pytest.approx(100 * 2 / 3)
    assert rnd["f1"] == pytest.approx(100 * 2 / 3) and rnd["yes_ratio"] == pytest.approx(50.0)
    # adversarial: preds yes,yes,no,yes ("Nope" -> yes) vs labels yes,no,no,yes -> TP=2 FP=1 TN=1 FN=0.
    assert (adv["tp"], adv["fp"], adv["tn"], adv["fn"]) == (2, 1, 1, 0)
    assert adv["accuracy"] == pytest.approx(75.0) and adv["recall"] == pytest.approx(100.0)
    assert adv["f1"] == pytest.approx(100 * (2 * (2 / 3) * 1) / ((2 / 3) + 1))  # = 80
    assert adv["yes_ratio"] == pytest.approx(75.0)
    # popular has no answered question: left out of the mean, counted as missing.
    assert "popular" not in res["breakdown"]["split"] and res["counts"]["missing"] == 1
    assert res["metrics"]["f1"] == pytest.approx((100 * 2 / 3 + 80) / 2)
    assert res["metrics"]["accuracy"] == pytest.approx((100 * 4 / 6 + 75) / 2)
    assert res["main_metric"] == "f1"


# ---------------------------------------------------------------- MME
def test_mme_parse_rule():
    assert mme_parse("Yes.") == "yes" and mme_parse(" no") == "no"  # "yes." holds "yes" in its first 4 chars
    assert mme_parse("Yes, there is") == "yes"  # first four characters contain "yes"
    assert mme_parse("The answer is yes") == "other"
    assert mme_parse("No.") == "no" and mme_parse("Nope") == "no"


def test_mme_periods_stay_in_the_official_reading():
    # calculation.py does not delete periods: "...y" / "n.o" hold neither word -> "other".
    assert mme_parse("...yes") == "other" and mme_parse("n.o") == "other"
    # lmms-eval deletes them first: "yes" / "no".
    assert mme_parse("...yes", strip_periods=True) == "yes" and mme_parse("n.o", strip_periods=True) == "no"
    assert mme_parse("Y.E.S.", strip_periods=True) == "yes" and mme_parse("Y.E.S.") == "other"


def test_mme_acc_and_acc_plus(files, tmp_path):
    yn = "Please answer yes or no."
    q = {
        "dog": f"Is there a dog in this image? {yn}",
        "cat": f"Is there a cat in this image? {yn}",
        "paint": f"Is this a painting? {yn}",
        "glass": f"Is this glassware? {yn}",
        "cpp": f"Is this C++ code? {yn}",
        "py": f"Is this Python code? {yn}",
    }
    base = "MME/MME_Benchmark_release_version"
    # existence (flat layout): two images, each with a yes- and a no-question.
    for stem in ("e1", "e2"):
        files.image(f"{base}/existence/{stem}.jpg")
        # The release has a few double spaces before "Please answer": matching ignores them.
        files.text(f"{base}/existence/{stem}.txt", f"{q['dog']}\tYes\n{q['cat'].replace(' ' + yn, '  ' + yn)}\tNo\n")
    # artwork (images/ + questions_answers_YN/ layout); the question file names the image without images/.
    files.image(f"{base}/artwork/images/a1.jpg")
    files.text(f"{base}/artwork/questions_answers_YN/a1.txt", f"{q['paint']}\tYes\n{q['glass']}\tNo\n")
    files.image(f"{base}/code_reasoning/c1.png")
    files.text(f"{base}/code_reasoning/c1.txt", f"{q['cpp']}\tYes\n{q['py']}\tNo\n")
    rows = []
    for sub, img, key in [
        ("existence", "e1.jpg", "dog"),
        ("existence", "e1.jpg", "cat"),
        ("existence", "e2.jpg", "dog"),
        ("existence", "e2.jpg", "cat"),
        ("artwork", "a1.jpg", "paint"),
        ("artwork", "a1.jpg", "glass"),
        ("code_reasoning", "c1.png", "cpp"),
        ("code_reasoning", "c1.png", "py"),
    ]:
        # code_reasoning rows drop MME's "Please answer yes or no." (LLaVA files may): still matched.
        text = q[key].replace(f" {yn}", "") if sub == "code_reasoning" else q[key]
        rows.append(
            {"question_id": f"{sub}/{img}", "image": f"{sub}/{img}", "text": f"{text}\n{SUFFIX}", "category": sub}
        )
    files.jsonl("MME/llava_mme.jsonl", rows)
    bench = get_benchmark("mme", root=files.root / "MME")
    records, skips = bench.load()
    assert not skips and [r.id for r in records][:2] == ["existence/e1.jpg", "existence/e1.jpg#1"]
    assert records[4].image == files.root / f"{base}/artwork/images/a1.jpg"
    assert records[0].prompt == f"<image>\n{q['dog']}\n{SUFFIX}"
    assert records[6].prompt == f"<image>\nIs this C++ code?\n{SUFFIX}"  # prompt kept as in the file
    assert [r.meta["label"] for r in records] == ["yes", "no"] * 4
    ans = ["Yes", "No", "Yes", "Yes, there is", "yes.", "no", "The answer is yes", "No"]
    res = bench.score(records, {r.id: a for r, a in zip(records, ans)})
    sub = res["breakdown"]["subtask"]
    # existence: 3/4 questions right, 1/2 images fully right -> 75 + 50.
    assert sub["existence"] == pytest.approx({"acc": 75.0, "acc_plus": 50.0, "score": 125.0})
    assert sub["artwork"] == pytest.approx({"acc": 100.0, "acc_plus": 100.0, "score": 200.0})
    # code_reasoning: "The answer is yes" parses to "other" (wrong) -> 1/2 and 0/1.
    assert sub["code_reasoning"] == pytest.approx({"acc": 50.0, "acc_plus": 0.0, "score": 50.0})
    assert res["metrics"] == pytest.approx({"perception": 125 + 200, "cognition": 50, "total": 375})

    assert res["options"] == {"scoring_rule": "official"}

    # Periods: "...Yes" for the first existence question is "other" officially -> existence drops to
    # 2/4 right and 0/2 images fully right (50 + 0); lmms-eval's reading keeps it right (125).
    dotted = {r.id: a for r, a in zip(records, ["...Yes", *ans[1:]])}
    assert bench.score(records, dotted)["breakdown"]["subtask"]["existence"]["score"] == pytest.approx(50.0)
    lmms = get_benchmark("mme", root=files.root / "MME", scoring_rule="lmms_eval")
    res_lmms = lmms.score(records, dotted, skips=[])
    assert res_lmms["breakdown"]["subtask"]["existence"]["score"] == pytest.approx(125.0)
    assert res_lmms["options"] == {"scoring_rule": "lmms_eval"}

    paths = bench.write_submission(records, {r.id: a for r, a in zip(records, ans)}, tmp_path / "sub")
    art = next(p for p in paths if p.name == "artwork.txt").read_text().splitlines()
    assert art[0] == f"a1.jpg\t{q['paint']}\tYes\tyes."


# ---------------------------------------------------------------- ScienceQA
def test_sqa_letter_parsing():
    assert parse_sqa_letter("B") == "B" and parse_sqa_letter(" C\n") == "C"
    assert parse_sqa_letter("A. the cat") == "A"
    assert parse_sqa_letter("The answer is D.") == "D"
    assert parse_sqa_letter("A.") is None  # official quirk: no space after the period -> failed
    assert parse_sqa_letter("The answer is A. The answer is B.") is None  # ambiguous


def _sqa(files, **options):
    def conv(text: str, ans: str) -> list[dict[str, str]]:
        return [{"from": "human", "value": text}, {"from": "gpt", "value": f"The answer is {ans}."}]

    q = "Context: N/A\nQuestion: Which is a mammal?\nOptions: (A) cat (B) fish"
    items = [
        {"id": "p1", "image": "p1/image.png", "conversations": conv(f"<image>\n{q}", "A")},
        {"id": "p2", "image": "p2/image.png", "conversations": conv(q, "B")},
        {"id": "p3", "image": "p3/image.png", "conversations": conv(q, "C")},
        {"id": "p4", "image": "p4/image.png", "conversations": conv(q, "A")},
        {"id": "p5", "image": "p5/image.png", "conversations": conv(q, "A")},  # image file missing
        {"id": "p6", "conversations": conv(q, "B")},
    ]  # text-only question
    for pid in ("p1", "p2", "p3", "p4"):
        files.image(f"scienceqa/images/test/{pid}/image.png")
    files.json("scienceqa/llava_test_CQM-A.json", items)
    probs = {
        "p1": (0, 2, "natural science"),
        "p2": (1, 3, "natural science"),
        "p3": (2, 3, "social science"),
        "p4": (0, 2, "language science"),
        "p5": (0, 2, "language science"),
        "p6": (1, 2, "social science"),
    }
    files.json(
        "scienceqa/problems.json",
        {p: {"answer": a, "choices": [f"c{i}" for i in range(n)], "subject": s} for p, (a, n, s) in probs.items()},
    )
    return get_benchmark("scienceqa", root=files.root / "scienceqa", **options)


ANSWERS = {"p1": "A", "p2": "B. fish", "p3": "The answer is C.", "p4": "C", "p6": "B"}


def test_sqa_img_accuracy(files):
    bench = _sqa(files)
    records, skips = bench.load()
    assert [r.id for r in records] == ["p1", "p2", "p3", "p4"] and [s.reason for s in skips] == ["missing_image"]
    suffix = "Answer with the option's letter from the given choices directly."
    assert (
        records[0].prompt == f"<image>\nContext: N/A\nQuestion: Which is a mammal?\nOptions: (A) cat (B) fish\n{suffix}"
    )
    assert records[0].max_new_tokens == 1024
    res = bench.score(records, ANSWERS)
    # p1, p2, p3 right; p4 answers "C" but has only two choices -> wrong.
    assert res["metrics"]["img_accuracy"] == pytest.approx(75.0)
    assert res["breakdown"]["subject"] == pytest.approx(
        {"language science": 0.0, "natural science": 100.0, "social science": 100.0}
    )


def test_sqa_all_questions(files):
    records, _ = _sqa(files, img_only=False).load()
    assert records[-1].id == "p6" and records[-1].image is None and not records[-1].prompt.startswith("<image>")
    res = get_benchmark("scienceqa", root=files.root / "scienceqa", img_only=False).score(records, ANSWERS, skips=[])
    assert res["metrics"] == pytest.approx({"img_accuracy": 75.0, "accuracy": 100 * 4 / 5})
