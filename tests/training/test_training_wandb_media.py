"""Offline wandb runs keep their sample-prediction images inside the run folder: wandb stages the files of a
logged table under `WANDB_DATA_DIR`, which the loggers point at `<run dir>/wandb/data` (not the user's data
folder), so a run folder copied off a node is complete."""

from __future__ import annotations

from pathlib import Path

import pytest
import wandb

from dc.pipeline import train

from train_helpers import compose_config, single_thread  # noqa: F401


def test_prediction_images_stay_in_the_run_folder(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))  # no credentials: offline; wandb's default data folder is under HOME
    monkeypatch.setenv("WANDB_DATA_DIR", "unset")  # recorded, so the value the loggers set is undone afterwards
    wandb.teardown()  # settings cached by an earlier wandb use in this process would hide the offline mode
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_RUN_GROUP", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    cfg = compose_config(
        "train",
        [
            "debug=fast",
            "stage=pretrain",
            "logger=wandb",
            f"paths.output_dir={out}",
            f"paths.data_dir={data_dir}",
            "run_name=media",
            "trainer.enable_progress_bar=false",
            "trainer.max_steps=1",
            "callbacks.predictions.every_n_steps=1",
            "callbacks.predictions.max_new_tokens=2",
            "callbacks.predictions.num_samples=2",
        ],
    )
    train(cfg)
    staged = [p for p in (out / "wandb" / "data" / "artifacts" / "staging").iterdir() if p.is_file()]
    images = [p for p in staged if p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"]
    assert len(images) == 2, sorted(str(p) for p in out.rglob("*") if p.is_file())  # the 2 samples' images
    assert list(out.glob("wandb/offline-run-*/files/media/table/samples/predictions_*.table.json"))
    outside = [p for p in (home / ".local" / "share" / "wandb").rglob("*") if p.is_file()]
    assert not outside, outside
    wandb.teardown()
