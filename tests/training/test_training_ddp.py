"""`trainer=ddp` with 2 CPU processes (gloo) trains the tiny model through `train.py` (Lightning re-launches
sys.argv for rank 1, with the same hydra.run.dir)."""

from __future__ import annotations

import math
from pathlib import Path

from train_helpers import load_ckpt, run_train_py, single_thread  # noqa: F401


def test_ddp_two_cpu_processes_train(tmp_path: Path, data_dir: Path) -> None:
    run_dir = tmp_path / "ddp"
    done = run_train_py(
        [
            "debug=fast",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "stage.global_batch_size=8",
            "trainer.max_steps=2",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "run_name=ddp",
            f"paths.data_dir={data_dir}",
        ],
        run_dir,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    log = (run_dir / "train.log").read_text()
    assert "global batch 8 = 2 devices × 4 per device × 1 accumulation" in log
    assert (run_dir / "train_ddp_process_1.log").exists()  # rank 1 ran as its own process
    ckpt = load_ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    # each rank's loader holds its own shard: the saved position is rank 0's, 2 batches of the epoch
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == 2
    metrics = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    losses = [
        float(r.split(",")[header.index("train/loss")]) for r in metrics[1:] if r.split(",")[header.index("train/loss")]
    ]
    assert losses and all(math.isfinite(x) for x in losses)
