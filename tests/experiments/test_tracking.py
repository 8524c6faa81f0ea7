"""wandb records of a study, offline: a point run with the sweep choices as flat top-level config keys and the
metrics as summary, grouped per sweep; the collected table as a wandb Table with its plot; every file (staged
table media included) inside the run folder, none in the user's wandb data folder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import wandb
from omegaconf import OmegaConf

from dc.experiments.collect import collect
from dc.experiments.tracking import log_collected, log_point, table_rows


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))  # no ~/.netrc: offline; the default WANDB_DATA_DIR would be under it
    monkeypatch.setenv("WANDB_DATA_DIR", "unset")  # recorded, so the value the code sets is undone afterwards
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_RUN_GROUP", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield home
    wandb.teardown()  # wandb keeps process-wide settings from its first use; later tests start afresh


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_point_run_has_flat_fields_and_metrics(offline: Path, sweep: Path) -> None:
    point = sorted(p for p in sweep.iterdir() if p.is_dir())[3]  # connector=dci seed=1
    record = json.loads((point / "point.json").read_text())
    record["metrics"] = {"synthetic/accuracy": 80.0}
    node = OmegaConf.create(
        {"_target_": "lightning.pytorch.loggers.WandbLogger", "project": "p", "group": "g1", "tags": ["t"]}
    )
    held = log_point(node, point, "dci-s1", record)
    assert held["config"]["connector"] == "dci" and held["config"]["seed"] == 1  # top level, not under `cfg`
    assert held["config"]["groups"] == [[0, 11], [12, 23]] and held["config"]["visual_tokens"] == 9
    assert held["summary"]["synthetic/accuracy"] == 80.0 and held["group"] == "g1"
    assert Path(held["dir"]).is_relative_to(point / "wandb")
    assert (point / "wandb_id.txt").read_text() == held["id"]  # a requeued point logs to the same run
    assert not _files(offline / ".local" / "share" / "wandb")


def test_collected_table_and_plot_go_to_one_run(offline: Path, sweep: Path) -> None:
    collected = collect(sweep, metrics=["synthetic/accuracy"])
    run_dir = Path(log_collected(sweep, collected, project="p"))
    assert run_dir.is_relative_to(sweep / "collect" / "wandb")
    (table_file,) = run_dir.glob("media/table/results_*.table.json")
    logged = json.loads(table_file.read_text())
    columns, rows = table_rows(collected["table"])
    assert logged["columns"] == columns
    assert logged["data"][0][:4] == rows[0][:4] and logged["data"][0][3] == pytest.approx(62.0)
    if collected["paths"]["png"] is not None:
        assert list(run_dir.glob("media/images/plot_*.png"))
    assert not _files(offline / ".local" / "share" / "wandb")  # staged media stays in the sweep folder
