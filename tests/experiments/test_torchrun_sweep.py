"""The torchrun loop runs the whole recipe per point when ENTRY names it: one distributed job per grid point, each
in its own folder of one sweep folder (what `collect` reads)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dc_testing import ROOT


def test_sweep_script_runs_the_recipe_per_point(tmp_path: Path) -> None:
    env = {**os.environ, "DRY_RUN": "1", "GPUS_PER_NODE": "8", "ENTRY": "-m dc.experiments.recipe"}
    env["SWEEP_DIR"] = str(tmp_path / "t1")
    cmd = [
        str(ROOT / "scripts" / "sweep_torchrun.sh"),
        "connector=mlp,dci",
        "seed=1,2",
        "--",
        "experiment=table1_layers",
    ]
    lines = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(lines) == 4
    for line in lines:
        assert line.startswith("torchrun ") and " -m dc.experiments.recipe " in line and "train.py" not in line
        assert "trainer.devices=8" in line and "experiment=table1_layers" in line
    assert f"hydra.run.dir={tmp_path / 't1'}/3-connector-dci_seed-2" in lines[3]
    default = subprocess.run(cmd, cwd=ROOT, env={**env, "ENTRY": ""}, capture_output=True, text=True, check=True)
    assert " train.py " in default.stdout.splitlines()[0]  # without ENTRY: train.py, as before
