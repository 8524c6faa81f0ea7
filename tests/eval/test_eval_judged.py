"""MM-Vet and LLaVA-Bench: request files without a judge, scores from judge replies (no network)."""

from __future__ import annotations

import json

import pytest

from dc.eval.benchmarks.judge import make_judge
from dc.eval.benchmarks.llava_bench import RULE, SYSTEM, parse_review
from dc.eval.benchmarks.mmvet import GRADER_PROMPT

from dc_testing import get_benchmark


def _mmvet(files, **options):
    qs = [
        (0, "What is x in the equation?", "-1 <AND> -5", ["ocr", "math"]),
        (1, "What is this?", "a cat", ["rec"]),
        (2, "Where is it?", "Paris", ["rec", "know"]),
        (3, "Who?", "Bob", ["rec"]),
    ]
    files.jsonl(
        "mm-vet/llava-mm-vet.jsonl", [{"question_id": i, "image": f"v1_{i}.png", "text": q} for i, q, _, _ in qs]
    )
    for i, *_ in qs:
        files.image(f"mm-vet/images/v1_{i}.png")
    files.json("mm-vet/mm-vet.json", {f"v1_{i}": {"question": q, "answer": a, "capability": c} for i, q, a, c in qs})
    return get_benchmark("mmvet", root=files.root / "mm-vet", **options)


MMVET_ANSWERS = {"v1_0": "x = -1", "v1_1": "A cat.", "v1_2": "London", "v1_3": "Alice"}


def test_mmvet_without_judge_writes_requests(files, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    bench = _mmvet(files, use_judge=True)  # enabled but no key: must not fail, must not call anything
    records, _ = bench.load()
    assert records[0].prompt == "<image>\nWhat is x in the equation?" and records[0].max_new_tokens == 1024
    res = bench.score(records, MMVET_ANSWERS)
    assert res["status"] == "needs_judge" and res["metrics"] == {}
    assert any("OPENAI_API_KEY" in n for n in res["notes"])
    results, requests = bench.write_submission(records, MMVET_ANSWERS, tmp_path / "sub")
    assert json.loads(results.read_text()) == MMVET_ANSWERS
    first = json.loads(requests.read_text().splitlines()[0])
    assert first["custom_id"] == "v1_0" and first["url"] == "/v1/chat/completions"
    assert first["body"]["model"] == "gpt-4-0613" and first["body"]["max_tokens"] == 3
    # Official query: prompt, newline, then "question | gt (with spaced <AND>) | prediction | ".
    assert first["body"]["messages"][0]["content"] == (
        GRADER_PROMPT + "\nWhat is x in the equation? | -1  <AND>  -5 | x = -1 | "
    )


def test_mmvet_scores_from_replies(files, tmp_path):
    replies = tmp_path / "batch_output.jsonl"
    lines = [
        {"custom_id": "v1_0", "response": {"body": {"choices": [{"message": {"content": "0.5"}}]}}},
        {"custom_id": "v1_1", "content": "1.0"},
        {"custom_id": "v1_2", "content": "0.2 partly"},
        {"custom_id": "v1_3", "content": "N/A"},
    ]
    replies.write_text("".join(json.dumps(x) + "\n" for x in lines))
    bench = _mmvet(files, judge_responses=str(replies))
    records, _ = bench.load()
    res = bench.score(records, MMVET_ANSWERS)
    # graded: 0.5, 1.0, 0.2 (v1_3 unparsable -> skipped): total = 1.7 / 3.
    assert res["metrics"]["total"] == pytest.approx(100 * 1.7 / 3)
    assert res["breakdown"]["capability"] == pytest.approx({"know": 20.0, "math": 50.0, "ocr": 50.0, "rec": 60.0})
    assert res["counts"]["skipped"] == {"judge_unparsable": 1}


def test_mmvet_live_judge_is_injectable(files):
    bench = _mmvet(files)
    calls = []

    def fake_judge(messages, temperature, max_tokens):
        calls.append((temperature, max_tokens))
        return "1.0"

    bench.judge = fake_judge
    records, _ = bench.load()
    assert bench.score(records, MMVET_ANSWERS)["metrics"]["total"] == pytest.approx(100.0)
    assert calls == [(0.0, 3)] * 4


def test_make_judge_needs_flag_and_key(monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    assert make_judge(False, "m", "MY_KEY") == (None, None)
    judge, note = make_judge(True, "m", "MY_KEY")
    assert judge is None and "MY_KEY" in note
    monkeypatch.setenv("MY_KEY", "secret")
    assert make_judge(True, "m", "MY_KEY")[0] is not None


# ---------------------------------------------------------------- LLaVA-Bench
def test_llava_bench_requests_and_relative_score(files, tmp_path):
    qs = [(0, "conv"), (1, "detail"), (2, "complex"), (3, "conv")]
    files.jsonl(
        "llava-bench-in-the-wild/questions.jsonl",
        [{"question_id": i, "image": "001.jpg", "text": f"Question {i}?", "category": c} for i, c in qs],
    )
    files.jsonl(
        "llava-bench-in-the-wild/context.jsonl", [{"id": "001", "image": "001.jpg", "caption": "A dog on grass."}]
    )
    files.jsonl(
        "llava-bench-in-the-wild/answers_gpt4.jsonl", [{"question_id": i, "text": f"Reference {i}."} for i, _ in qs]
    )
    files.image("llava-bench-in-the-wild/images/001.jpg")
    answers = {str(i): f"Ours {i}." for i, _ in qs}

    bench = get_benchmark("llava_bench", root=files.root / "llava-bench-in-the-wild")
    records, _ = bench.load()
    assert records[0].prompt == "<image>\nQuestion 0?" and records[0].max_new_tokens == 1024
    assert bench.score(records, answers)["status"] == "needs_judge"
    _, req_path = bench.write_submission(records, answers, tmp_path / "sub")
    req = json.loads(req_path.read_text().splitlines()[0])
    assert req["body"]["messages"][0] == {"role": "system", "content": SYSTEM}
    assert req["body"]["messages"][1]["content"] == (
        "[Context]\nA dog on grass.\n\n[Question]\nQuestion 0?\n\n[Assistant 1]\nReference 0.\n\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\nOurs 0.\n\n[End of Assistant 2]\n\n[System]\n{RULE}\n\n"
    )
    assert req["body"]["temperature"] == 0.2

    replies = tmp_path / "replies.jsonl"
    replies.write_text(
        "".join(
            json.dumps({"custom_id": c, "content": t}) + "\n"
            for c, t in [
                ("0", "8 6\nAssistant 2 misses details."),
                ("1", "7, 7\nTie."),
                ("2", "9 3"),
                ("3", "Score: 8"),
            ]
        )
    )
    bench = get_benchmark("llava_bench", root=files.root / "llava-bench-in-the-wild", judge_responses=str(replies))
    records, _ = bench.load()
    res = bench.score(records, answers)
    # pairs (reference, ours): (8,6) conv, (7,7) detail, (9,3) complex; "Score: 8" unparsable.
    # all: mean ours / mean reference = (16/3) / 8.
    assert res["metrics"]["relative_score"] == pytest.approx(100 * (16 / 3) / 8)
    assert res["breakdown"]["category"] == pytest.approx({"complex": 100 * 3 / 9, "conv": 75.0, "detail": 100.0})
    assert res["counts"]["skipped"] == {"judge_unparsable": 1}


def test_llava_bench_review_parsing():
    assert parse_review("8 6\nbecause") == (8.0, 6.0)
    assert parse_review("7, 7") == (7.0, 7.0)
    assert parse_review("Score: 8") is None and parse_review("8 6 5") is None


def test_live_judge_replies_are_cached_and_failures_stop_calls(files, tmp_path):
    cache = tmp_path / "judge" / "mmvet_replies.jsonl"
    bench = _mmvet(files, judge_responses=str(cache))
    records, _ = bench.load()
    calls = []

    def flaky(messages, temperature, max_tokens):
        calls.append(1)
        if len(calls) > 1:
            raise TimeoutError("network down")
        return "0.5"

    bench.judge = flaky
    res = bench.score(records, MMVET_ANSWERS)
    # One grade (0.5) before the failure; no further calls after it.
    assert len(calls) == 2 and res["metrics"]["total"] == pytest.approx(50.0)
    assert any("only 1 of 4" in n for n in res["notes"])
    assert len(cache.read_text().splitlines()) == 1

    def steady(messages, temperature, max_tokens):
        calls.append(1)
        return "1.0"

    bench.judge, calls[:] = steady, []
    res = bench.score(records, MMVET_ANSWERS)
    # Only the three missing grades are requested: (0.5 + 3 * 1.0) / 4.
    assert len(calls) == 3 and res["metrics"]["total"] == pytest.approx(100 * 3.5 / 4)
