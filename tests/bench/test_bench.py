"""Smoke test of the benchmark runner: the smallest P1 case end to end, so `dc.bench` cannot rot.

Numbers from the tiny shape mean nothing; only the output structure and that ratios are positive and finite
are checked. Outputs go to `tmp_path`, never to `docs/`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dc.bench.__main__ import main


@pytest.fixture(autouse=True)
def _restore_threads():
    """`main` sets torch's thread count; give the rest of the test session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _positive_finite(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_quick_tiny_p1_writes_markdown_and_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    assert (
        main(
            [
                "--mode",
                "quick",
                "--tiny",
                "--only",
                "P1,P2,P5,P6",
                "--warmup",
                "0",
                "--repeats",
                "1",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.with_suffix(".json").read_text())
    for key in ("command", "date", "platform", "cpu_count", "device", "torch"):
        assert data["meta"][key] not in (None, "")
    figures = {f["figure"]: f for f in data["figures"]}
    assert set(figures) == {"P1", "P2", "P5", "P6"}

    p1 = figures["P1"]
    assert p1["status"] == "measured"
    assert set(p1["ratios"]) == {"sci", "dci", "sti"}
    for r in p1["ratios"].values():
        assert _positive_finite(r["median"]) and _positive_finite(r["min"])
    for side in ("mlp", "sci", "dci", "sti"):
        s = p1["times_s"][side]
        assert s["min"] <= s["median"] <= s["max"] and len(s["samples"]) == 1
    p5 = figures["P5"]  # measured on CPU (tokens/s, TFLOP/s); MFU only with a GPU and an explicit peak
    assert p5["status"] == "measured" and p5["rates"]["mfu"] is None
    rates = p5["rates"]
    tokens = 48  # the tiny P5 shape: batch 1, seq 48, no padding
    assert rates["tokens_per_s"] == pytest.approx(tokens / p5["times_s"]["dci"]["median"])
    assert rates["model_tflops_per_s"] == pytest.approx(rates["flops_per_step"] / p5["times_s"]["dci"]["median"] / 1e12)
    assert figures["P2"]["status"] in ("recorded", "missing")
    assert figures["P6"]["status"] in ("recorded", "missing")

    md = out.read_text()
    assert md.startswith("# Benchmarks")
    for needle in ("### P1:", "| sci |", "| dci |", "| sti |", "### P5:", "platform", "cpu_count", "not yet measured"):
        assert needle in md


def test_full_mode_without_cuda_marks_figures_not_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "full.md"
    assert main(["--mode", "full", "--only", "P1,P3,P4", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert [f["status"] for f in data["figures"]] == ["not yet measured"] * 3
    assert "measured above" not in out.read_text()


def test_verdict_flags_rounds_that_straddle_the_goal() -> None:
    from dc.bench.report import verdict

    assert "every round agrees" in verdict("<= 1.03", {"median": 1.0, "paired": [0.99, 1.01]})
    assert "inconclusive" in verdict("<= 1.03", {"median": 1.0, "paired": [0.9, 1.1, 1.0]})
    assert "missed" in verdict(">= 3.0", {"median": 2.0, "paired": [2.0]})
    assert verdict(">= 3.0 at 7B on GPU", {"median": 1.5}) == ">= 3.0 at 7B on GPU"
