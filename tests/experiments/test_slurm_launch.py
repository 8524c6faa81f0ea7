"""The SLURM launcher config (`hydra/launcher=slurm`) composes with the recipe and submits a sweep point through
submitit's real SLURM executor, to a stand-in `sbatch` / `srun` / `sacct` that run the job here (the sbatch
script submitit writes is kept and checked), so a requeue-ready sweep point finishes with its `point.json`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dc_testing import CONFIGS, ROOT
from experiment_helpers import TINY

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="optional extra: pip install '.[slurm]'")

SBATCH = r"""#!/usr/bin/env bash
# Stand-in sbatch: keep the script, then run its array tasks (or the one job) in the background with the
# variables SLURM would set for one task on one node.
script="$1"; id=$(( 10000 + RANDOM ))
cp "$script" "$FAKE_SLURM/sbatch_$id.sh"
range=$(sed -n 's/^#SBATCH --array=\([0-9]*\)-\([0-9]*\).*/\1 \2/p' "$script")
(
  common=(SLURM_JOB_ID=$id SLURM_NTASKS=1 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NODEID=0 SLURM_JOB_NUM_NODES=1
          SLURM_JOB_NODELIST=localhost SLURM_JOB_NAME=recipe)
  if [[ -n "$range" ]]; then
    read -r first last <<< "$range"
    for i in $(seq "$first" "$last"); do
      env "${common[@]}" SLURM_ARRAY_JOB_ID=$id SLURM_ARRAY_TASK_ID=$i bash "$script"
    done
  else
    env "${common[@]}" bash "$script"
  fi
) > "$FAKE_SLURM/job_$id.log" 2>&1 &
echo "Submitted batch job $id"
"""

SRUN = r"""#!/usr/bin/env bash
# Stand-in srun: drop srun's own options (--output/--error take a value), run the command as the one task.
while [[ $# -gt 0 ]]; do
  case "$1" in --output|--error) shift 2 ;; --*) shift ;; *) break ;; esac
done
exec "$@"
"""

SACCT = """#!/usr/bin/env bash
echo 'JobID|State|NodeList'   # no rows: state unknown, submitit waits for the result file
"""


def _fake_slurm(folder: Path) -> Path:
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in {"sbatch": SBATCH, "srun": SRUN, "sacct": SACCT, "scancel": "#!/bin/sh\n"}.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_slurm_launcher_composes_with_the_recipe() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(
            "recipe", overrides=["hydra/launcher=slurm", "experiment=table1_layers"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 8 and launcher.max_num_timeout == 3
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"  # inside the pinned sweep folder


def test_slurm_launcher_submits_a_sweep_point(tmp_path: Path, data_dir: Path) -> None:
    slurm = tmp_path / "slurm"
    bin_dir = _fake_slurm(slurm)
    sweep = tmp_path / "sweep"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SLURM": str(slurm),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "dc.experiments.recipe", "-m", "hydra/launcher=slurm"]
    cmd += ["hydra.launcher.gpus_per_node=1", "hydra.launcher.partition=debug", "connector=sci", *TINY]
    cmd += [f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(p.read_text() for p in slurm.glob("job_*.log"))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-3000:]

    (script,) = slurm.glob("sbatch_*.sh")
    text = script.read_text()
    for line in [
        "#SBATCH --ntasks-per-node=1",  # one task per GPU
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=10",
        "#SBATCH --partition=debug",
        "#SBATCH --time=1440",
        "#SBATCH --nodes=1",
        "#SBATCH --signal=USR2@120",
    ]:
        assert line in text, text
    assert f"{sweep}/.submitit/" in text and "srun" in text and "submitit.core._submit" in text

    (point,) = [p for p in sweep.iterdir() if (p / "point.json").exists()]
    record = json.loads((point / "point.json").read_text())
    assert record["status"] == "ok" and record["fields"]["connector"] == "sci"
    assert "synthetic/accuracy" in record["metrics"]
