"""`collect` on a sweep folder laid out as Hydra and the recipe write it: rows per configuration, mean ± sample std
over seeds computed by hand, failed / unfinished / never-started points named, the wandb table rows; labels from
the overrides the results were made with; options that match nothing are one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dc.experiments.collect import collect, expected_overrides, main
from dc.experiments.tracking import table_rows
from dc.utils.errors import ConfigError


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


def test_labels_come_from_the_overrides_the_results_were_made_with(sweep: Path) -> None:
    # a refused re-run in point 0's folder: Hydra rewrote .hydra/overrides.yaml, point.json keeps its results' own
    hydra_file = sweep / "0-t1-mlp-1" / ".hydra" / "overrides.yaml"
    OmegaConf.save(OmegaConf.create(["experiment=t1", "connector=mlp", "seed=1", "limit=40"]), hydra_file)
    # point 1 re-run with runtime-only overrides (progress bar, worker count, +overwrite): the same configuration
    record_file = sweep / "1-t1-mlp-2" / "point.json"
    record = json.loads(record_file.read_text())
    record["overrides"] += ["trainer.enable_progress_bar=false", "finetune.data.num_workers=2", "+overwrite=true"]
    record_file.write_text(json.dumps(record))
    result = collect(sweep, metrics=["synthetic/accuracy"])
    table = result["table"]
    assert table["label_columns"] == ["connector", "layers", "tokens"]
    mlp = table["rows"][0]
    assert len(table["rows"]) == 2 and mlp["cells"]["synthetic/accuracy"]["values"] == {"1": 50.0, "2": 70.0, "3": 66.0}
    assert [p for p in result["problems"] if "mlp" in p] == []  # every mlp job of multirun.yaml is there


def test_options_that_match_nothing_are_errors(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"^--metrics bogus/\*: matches none of the sweep's metrics \(synthetic/acc"):
        collect(sweep, metrics=["synthetic/accuracy", "bogus/*"], out=out)
    with pytest.raises(
        ConfigError, match=r"^--seed-key sed: no point has .*\(their keys: connector, experiment, seed\)"
    ):
        collect(sweep, seed_key="sed", out=out)
    assert not out.exists()  # no table without the columns or rows asked for
    table = collect(sweep, seed_key="seed", out=out)["table"]
    assert [r["cells"]["synthetic/accuracy"]["n"] for r in table["rows"]] == [3, 1]


def test_command_line_errors_are_one_line(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv, message in [
        ([str(tmp_path / "nope")], f"error: sweep folder {tmp_path / 'nope'} does not exist"),
        ([str(sweep), "--metrics", "bogus/*", "--out", str(tmp_path / "x")], "error: --metrics bogus/*: matches none"),
        ([str(sweep), "--seed-key", "sed"], "error: --seed-key sed: no point has an override sed=..."),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
