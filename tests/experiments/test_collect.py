"""`collect` on a sweep folder laid out as Hydra and the recipe write it: rows per configuration, mean ± sample std
over seeds computed by hand, failed / unfinished / never-started points named, the wandb table rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dc.experiments.collect import collect, expected_overrides
from dc.experiments.tracking import table_rows


def test_expected_points_come_from_hydra_sweep_params(sweep: Path) -> None:
    jobs = expected_overrides(sweep)
    assert len(jobs) == 6
    assert sorted(jobs[0]) == ["connector=mlp", "experiment=t1", "seed=1"]
    assert sorted(jobs[5]) == ["connector=dci", "experiment=t1", "seed=3"]


def test_table_means_and_sample_std_and_problems(sweep: Path, tmp_path: Path) -> None:
    result = collect(sweep, metrics=["synthetic/accuracy*"], out=tmp_path / "out")
    table = result["table"]
    assert table["label_columns"] == ["connector", "layers", "tokens"]
    assert table["metrics"] == ["synthetic/accuracy", "synthetic/accuracy_colour"]
    mlp, dci = table["rows"]
    assert mlp["labels"]["connector"] == "mlp" and dci["labels"]["connector"] == "dci"
    assert dci["labels"]["layers"] == "0–11 + 12–23" and mlp["labels"]["layers"] == "–"
    # by hand: mean(50, 70, 66) = 62; sample variance = ((-12)² + 8² + 4²) / 2 = 112
    cell = mlp["cells"]["synthetic/accuracy"]
    assert cell["mean"] == pytest.approx(62.0) and cell["std"] == pytest.approx(math.sqrt(112.0)) and cell["n"] == 3
    assert cell["values"] == {"1": 50.0, "2": 70.0, "3": 66.0}
    assert mlp["cells"]["synthetic/accuracy_colour"]["std"] == pytest.approx(5.0)  # 40, 45, 50
    one = dci["cells"]["synthetic/accuracy"]
    assert one["mean"] == 80.0 and one["std"] is None and one["n"] == 1  # the failed seed does not count
    assert (dci["ok"], dci["points"]) == (1, 2)

    md = (tmp_path / "out" / "table.md").read_text()
    assert "| mlp | – | 9 | 62.0 ± 10.6 | 45.0 ± 5.0 | 3/3 |" in md
    assert "| dci | 0–11 + 12–23 | 9 | 80.0 (n=1) | 90.0 (n=1) | 1/2 |" in md
    assert any("failed (RuntimeError: out of memory)" in p for p in result["problems"])
    (missing,) = [p for p in result["problems"] if p.startswith("missing (never started): ")]
    assert sorted(missing.split(": ", 1)[1].split()) == ["connector=dci", "experiment=t1", "seed=3"]
    assert f"- {missing}" in md
    assert json.loads((tmp_path / "out" / "table.json").read_text())["rows"][0]["cells"]["synthetic/accuracy"]["n"] == 3
    png = result["paths"]["png"]
    if png is not None:  # matplotlib installed (the `experiments` / `dev` extra)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    columns, rows = table_rows(table)
    assert columns[:3] == ["connector", "layers", "tokens"] and columns[3:5] == [
        "synthetic/accuracy mean",
        "synthetic/accuracy std",
    ]
    assert rows[0][3] == pytest.approx(62.0) and math.isnan(rows[1][4])


def test_default_metrics_are_the_headline_ones(sweep: Path) -> None:
    table = collect(sweep)["table"]
    assert table["metrics"] == ["synthetic/accuracy"]


def test_an_empty_or_absent_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no sweep points"):
        collect(tmp_path)
