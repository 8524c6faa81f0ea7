"""A sweep folder as Hydra and the recipe leave it, with chosen numbers (for `collect` and the wandb records)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf


def _point(sweep: Path, num: int, overrides: list[str], accuracy: dict[str, float] | None, status: str = "ok") -> None:
    """A point folder as the recipe leaves it: .hydra/overrides.yaml, point.json, eval/synthetic/*_results.json."""
    folder = sweep / f"{num}-{'-'.join(o.split('=')[1] for o in overrides)}"
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    choice = dict(o.split("=") for o in overrides)
    fields = {"connector": choice["connector"], "seed": int(choice["seed"]), "visual_tokens": 9}
    if choice["connector"] == "dci":
        fields["groups"] = [[0, 11], [12, 23]]
    record = {"status": status, "fields": fields, "metrics": {}, "overrides": overrides, "error": None}
    if status == "failed":
        record["error"] = "RuntimeError: out of memory"
    (folder / "point.json").write_text(json.dumps(record))
    if accuracy is not None:
        result = {"main_metric": "accuracy", "metrics": accuracy, "counts": {"answered": 8}}
        out = folder / "eval" / "synthetic"
        out.mkdir(parents=True)
        (out / "synthetic_results.json").write_text(json.dumps({"meta": {}, "results": {"synthetic": result}}))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "multirun" / "2026-01-01_00-00-00"
    sweep.mkdir(parents=True)
    multirun = {
        "hydra": {
            "sweeper": {"params": {"connector": "mlp,dci", "seed": "1,2,3"}},
            "overrides": {"task": ["experiment=t1"]},
        }
    }
    OmegaConf.save(OmegaConf.create(multirun), sweep / "multirun.yaml")
    base = ["experiment=t1"]
    _point(sweep, 0, [*base, "connector=mlp", "seed=1"], {"accuracy": 50.0, "accuracy_colour": 40.0})
    _point(sweep, 1, [*base, "connector=mlp", "seed=2"], {"accuracy": 70.0, "accuracy_colour": 45.0})
    _point(sweep, 2, [*base, "connector=mlp", "seed=3"], {"accuracy": 66.0, "accuracy_colour": 50.0})
    _point(sweep, 3, [*base, "connector=dci", "seed=1"], {"accuracy": 80.0, "accuracy_colour": 90.0})
    _point(sweep, 4, [*base, "connector=dci", "seed=2"], None, status="failed")
    # connector=dci seed=3 never started: no folder
    return sweep
