"""Resumable JSONL answers (partial last line, resume set) and atomic reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dc.eval.benchmarks import report
from dc.eval.benchmarks.answers_io import AnswerWriter, answered_ids, read_answer_records, read_answers


def test_partial_last_line_is_ignored_and_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "answers" / "gqa.jsonl"
    with AnswerWriter(path) as w:
        w.write("q1", "yes")
        w.write("q2", "left", prompt="Is it?")
    # A run killed mid-write leaves a fragment without its newline.
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "q3", "text": "ta')
    assert read_answers(path) == {"q1": "yes", "q2": "left"}
    assert answered_ids(path) == {"q1", "q2"}

    # Resume: only unanswered records are generated; the writer first removes the fragment.
    todo = [rid for rid in ["q1", "q2", "q3", "q4"] if rid not in answered_ids(path)]
    assert todo == ["q3", "q4"]
    with AnswerWriter(path) as w:
        for rid in todo:
            w.write(rid, f"answer-{rid}")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["q1", "q2", "q3", "q4"]  # every line parses
    assert read_answers(path)["q3"] == "answer-q3"
    assert read_answer_records(path)[1]["prompt"] == "Is it?"


def test_fragment_only_file_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    assert answered_ids(path) == set()
    path.write_text('{"id": "x", "te', encoding="utf-8")
    assert answered_ids(path) == set()
    with AnswerWriter(path) as w:
        w.write("x", "ok")
    assert path.read_text(encoding="utf-8") == '{"id": "x", "text": "ok"}\n'


def test_reader_accepts_llava_lines_and_skips_damage(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    lines = [
        '{"question_id": 7, "text": "B"}',
        "not json",
        '{"id": "8"}',
        '{"id": "9", "text": "C"}',
        '{"id": "9", "text": "D"}',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # int question_id becomes "7"; the damaged line and the line without text are skipped; last "9" wins.
    assert read_answers(path) == {"7": "B", "9": "D"}


def test_write_report_json_and_markdown(tmp_path: Path) -> None:
    res = {
        "benchmark": "gqa",
        "status": "ok",
        "main_metric": "accuracy",
        "metrics": {"accuracy": 62.5},
        "breakdown": {"semantic": {"attr": 50.0}},
        "counts": {"records": 8, "answered": 8, "missing": 0, "skipped": {"missing_image": 1}, "skipped_total": 1},
        "notes": [],
    }
    j, m = report.write_report({"gqa": res}, tmp_path / "out", meta={"ckpt": "dc-7b"})
    assert json.loads(j.read_text())["results"]["gqa"]["metrics"]["accuracy"] == 62.5
    md = m.read_text()
    assert "| gqa | ok | accuracy | 62.50 | 8 | 8 | 1 |" in md
    assert "ckpt" in md and "missing_image=1" in md and "| breakdown/semantic/attr | 50.00 |" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json", "results.md"]  # no temp files
    assert report.flatten_metrics(res) == {"accuracy": 62.5, "breakdown/semantic/attr": 50.0}


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "r.json"
    report.atomic_write_json(target, {"v": 1})

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", boom)
    with pytest.raises(OSError):
        report.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # temp file cleaned up
