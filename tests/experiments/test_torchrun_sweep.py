"""The torchrun loop runs the whole recipe per point when ENTRY names it: one distributed job per grid point, each
in its own folder of one sweep folder (what `collect` reads); a dry run prints the commands on a machine without
GPUs too."""

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


def test_list_values_stay_whole(tmp_path: Path) -> None:
    """Hydra's sweep grammar: commas inside brackets belong to the value (the README's layer sweep)."""
    env = {**os.environ, "DRY_RUN": "1", "GPUS_PER_NODE": "8", "SWEEP_DIR": str(tmp_path / "s")}
    cmd = [str(ROOT / "scripts" / "sweep_torchrun.sh"), "connector=sti,sci", "connector.layers=[7,15],[11,23]"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    points = [line for line in out.stderr.splitlines() if line.startswith("[")]
    assert points == [
        "[0/4] connector=sti connector.layers=[7,15]",
        "[1/4] connector=sti connector.layers=[11,23]",
        "[2/4] connector=sci connector.layers=[7,15]",
        "[3/4] connector=sci connector.layers=[11,23]",
    ]
    assert "connector.layers=\\[11\\,23\\]" in out.stdout.splitlines()[1]  # one argument, shell-quoted
    bad = subprocess.run([*cmd[:2], "connector.layers=[7,15"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unbalanced brackets" in bad.stderr


def test_dry_run_without_gpus_prints_the_commands(tmp_path: Path) -> None:
    """On a machine without GPUs (nvidia-smi failing as it does without a driver) and without GPUS_PER_NODE."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        '#!/bin/sh\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n'
    )
    smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "GPUS_PER_NODE"}
    env.update(DRY_RUN="1", ENTRY="-m dc.experiments.recipe", SWEEP_DIR=str(tmp_path / "t3"))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    cmd = [
        str(ROOT / "scripts" / "sweep_torchrun.sh"),
        "connector=mlp,dci,dci_efficient",
        "--",
        "experiment=table3_efficient",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and all(" --nproc_per_node 1 " in line and " trainer.devices=1 " in line for line in lines)
    assert "connector=dci_efficient experiment=table3_efficient" in lines[2]
    assert "failed" not in out.stderr and "the commands show GPUS_PER_NODE=1" in out.stderr
    assert not (tmp_path / "t3").exists()  # nothing ran
    env.pop("DRY_RUN")  # a real sweep there stops once, before its first point
    real = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert real.returncode == 1 and real.stderr.strip().splitlines() == ["no GPUs visible; set GPUS_PER_NODE"]
    assert not (tmp_path / "t3").exists()
