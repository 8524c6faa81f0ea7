"""wandb: offline without credentials, stable run id across resume, group from the environment, the run always
finished (also when training raises) so the next job gets a new run, resolved config and the predictions table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import wandb
from omegaconf import OmegaConf

from dc.eval.predictions import COLUMNS
from dc.pipeline import train
from dc.training.loggers import wandb_has_credentials, wandb_kwargs

from train_helpers import compose_config, single_thread  # noqa: F401

NODE = OmegaConf.create({"_target_": "lightning.pytorch.loggers.WandbLogger", "group": None})


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc


def test_offline_without_credentials_and_stable_id(
    no_credentials: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not wandb_has_credentials()
    first = wandb_kwargs(NODE, tmp_path / "run", resuming=False)
    assert first["offline"] is True and first["mode"] == "offline"
    assert (tmp_path / "run" / "wandb_id.txt").read_text() == first["id"]
    again = wandb_kwargs(NODE, tmp_path / "run", resuming=True)
    assert again["id"] == first["id"] and again["resume"] == "allow"
    monkeypatch.setenv("WANDB_RUN_GROUP", "sweep-7")  # from the launch script, passed on explicitly
    assert wandb_kwargs(NODE, tmp_path / "run4", resuming=False)["group"] == "sweep-7"
    assert "group" not in wandb_kwargs(OmegaConf.merge(NODE, {"group": "mine"}), tmp_path / "run5", resuming=False)
    monkeypatch.delenv("WANDB_RUN_GROUP")

    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (home / ".netrc").chmod(0o600)
    assert wandb_has_credentials()
    assert "offline" not in wandb_kwargs(NODE, tmp_path / "run2", resuming=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")  # an explicit mode always wins, passed on to wandb.init
    (home / ".netrc").unlink()
    third = wandb_kwargs(NODE, tmp_path / "run3", resuming=False)
    assert "offline" not in third and third["mode"] == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # what Lightning's offline=True leaves in the environment
    assert wandb_kwargs(NODE, tmp_path / "run3", resuming=False)["mode"] == "offline"
    monkeypatch.delenv("WANDB_MODE")


def _cfg(out: Path, data_dir: Path, *overrides: str):
    return compose_config(
        "train",
        [
            "debug=fast",
            "stage=pretrain",
            "logger=wandb",
            f"paths.output_dir={out}",
            f"paths.data_dir={data_dir}",
            "run_name=wb",
            "trainer.enable_progress_bar=false",
            "trainer.max_steps=2",
            *overrides,
        ],
    )


def test_failed_run_is_finished_and_the_next_run_is_new(
    no_credentials: None, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()
    wandb.setup()  # an earlier wandb use in this process: wandb has read its environment, without the group
    monkeypatch.setenv("WANDB_RUN_GROUP", "sweep-x")
    crash = [
        "+callbacks.crash._target_=dc.training.callbacks.CrashAtStep",
        "+callbacks.crash.step=1",
        "+callbacks.crash.sig=raise",
    ]
    with pytest.raises(RuntimeError, match="simulated failure"):
        train(_cfg(tmp_path / "failed", data_dir, *crash))
    assert wandb.run is None  # finished despite the exception
    failed_id = (tmp_path / "failed" / "wandb_id.txt").read_text()

    _, objects = train(
        _cfg(
            tmp_path / "ok",
            data_dir,
            "callbacks.predictions.every_n_steps=1",
            "callbacks.predictions.max_new_tokens=4",
            "callbacks.predictions.num_samples=2",
        )
    )
    assert wandb.run is None
    run = objects["trainer"].logger.experiment
    assert run.id == (tmp_path / "ok" / "wandb_id.txt").read_text() != failed_id
    assert run.group == "sweep-x"
    assert run.config.as_dict()["stage"] == "pretrain" and run.config.as_dict()["connector"] == "dci"  # flat fields
    logged = run.config.as_dict()["cfg"]
    assert logged["stage"]["name"] == "pretrain" and logged["run_name"] == "wb"  # the full resolved config
    assert logged["paths"]["output_dir"] == str(tmp_path / "ok")
    tables = sorted(
        (tmp_path / "ok" / "wandb").glob("offline-run-*/files/media/table/samples/predictions_*.table.json")
    )
    assert len(tables) == 2  # steps 1 and 2
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == COLUMNS and len(table["data"]) == 2
    assert table["data"][0][0] in (1, 2) and isinstance(table["data"][0][4], str)
