"""Loggers from the `logger` config, with the Weights & Biases conventions of this project.

* offline automatically when there is no API key (no `WANDB_API_KEY`, no `api.wandb.ai` entry in ~/.netrc) and
  `WANDB_MODE` is not set; sync later with `wandb sync <run dir>/wandb/offline-run-*`;
* group: `logger.wandb.group`, else `WANDB_RUN_GROUP` (set by `scripts/sweep_torchrun.sh`), else one group per
  Hydra multirun (`<experiment>-<sweep folder name>`, or the folder name alone), else the `experiment=` choice;
* the run id is kept in `<run dir>/wandb_id.txt`, so resuming in the same folder continues the same wandb run;
* the run's config holds the whole resolved config under `cfg` and the choices a dashboard filters on as flat
  top-level keys (`run_fields`: connector, encoder, llm, stage, data, image, layers/groups, seed);
* `WANDB_DATA_DIR` points into the run folder (`<run dir>/wandb/data`): wandb stages the files of logged tables
  (the sample-prediction images) there, so an offline run copied off a node keeps them;
* `finish_wandb` always closes the run (failed runs are marked failed) so the next job of a multirun starts a
  new one.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dc.utils.instantiate import instantiate

log = logging.getLogger(__name__)

WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"


def wandb_has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def sweep_group(experiment: str | None, sweep_dir: str | Path) -> str:
    """The wandb group of one sweep: `<experiment>-<sweep folder name>` (the folder name alone without one)."""
    name = Path(str(sweep_dir)).name
    return f"{experiment}-{name}" if experiment and experiment != "null" else name


def _hydra_group() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
    except Exception:  # noqa: BLE001 - Hydra missing or not configured: no derived group
        return None
    experiment = hc.runtime.choices.get("experiment")
    if str(hc.mode) == "RunMode.MULTIRUN":
        return sweep_group(experiment, hc.sweep.dir)
    if experiment and experiment != "null":
        return str(experiment)
    return None


RUN_GROUPS = ("connector", "encoder", "llm", "stage", "data", "image", "trainer")


def hydra_choices() -> dict[str, str]:
    """The config-group choices of the running Hydra job (`{}` outside one)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return {}
        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    except Exception:  # noqa: BLE001 - Hydra missing or not configured
        return {}


def run_fields(cfg: DictConfig) -> dict[str, Any]:
    """The flat fields that identify a run: config-group choices, fusion layers/groups and the seed."""
    choices = hydra_choices()
    out: dict[str, Any] = {group: choices.get(group) for group in RUN_GROUPS}
    if out["encoder"] is None and cfg.get("encoder") is not None:
        out["encoder"] = cfg.encoder.get("name")
    if out["stage"] is None and cfg.get("stage") is not None:
        out["stage"] = cfg.stage.get("name")
    connector = cfg.get("connector") or {}
    for key in ("layers", "groups"):
        if connector.get(key) is not None:
            out[key] = OmegaConf.to_container(connector[key], resolve=True)
    downsample = connector.get("downsample")
    out["downsample"] = OmegaConf.to_container(downsample, resolve=True) if downsample is not None else None
    out["seed"] = cfg.get("seed")
    return {k: v for k, v in out.items() if v is not None}


_ENV_MODES = {"dryrun": "offline", "run": "online"}  # WANDB_MODE's legacy values -> wandb.init's `mode`


def wandb_mode() -> str:
    """The `mode` for wandb.init: `WANDB_MODE` when set, else online with credentials and offline without.

    Always passed explicitly: wandb reads its environment once per process, so a WANDB_MODE set later (by the user,
    or by Lightning's `offline=True`, which sets it to "dryrun") would be unseen after an earlier wandb use.
    """
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        return _ENV_MODES.get(env_mode, env_mode)
    return "online" if wandb_has_credentials() else "offline"


def wandb_kwargs(node: DictConfig, output_dir: Path, resuming: bool) -> dict[str, Any]:
    """Extra `WandbLogger` arguments: offline mode, group and a stable run id."""
    extra: dict[str, Any] = {}
    extra["mode"] = wandb_mode()
    if "WANDB_MODE" not in os.environ and extra["mode"] == "offline":
        extra["offline"] = True
        log.info("no wandb credentials: logging offline (sync later with `wandb sync`)")
    if node.get("group") is None:
        # passed explicitly: wandb reads its environment once per process, so a variable set after an earlier
        # wandb use in the same process would otherwise be ignored
        group = os.environ.get("WANDB_RUN_GROUP") or _hydra_group()
        if group:
            extra["group"] = group
    if node.get("id") is None and node.get("version") is None:
        id_file = output_dir / "wandb_id.txt"
        if resuming and id_file.exists():
            extra["id"] = id_file.read_text().strip()
            extra["resume"] = "allow"
        else:
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            extra["id"] = run_id
            if is_rank_zero():
                output_dir.mkdir(parents=True, exist_ok=True)
                id_file.write_text(run_id)
    return extra


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 (as Lightning reads it from the launcher's environment)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


CSV_TARGET = "lightning.pytorch.loggers.CSVLogger"


def keep_csv_metrics(node: DictConfig) -> Path | None:
    """Before a resumed run's CSVLogger starts (it deletes an existing `metrics.csv`), move that file aside.

    Returns the new name (`metrics.<n>.csv`, n counting earlier segments), or None when there was nothing to keep.
    """
    version = node.get("version")
    folder = (
        Path(str(node.get("save_dir")))
        / str(node.get("name") or "")
        / (str(version) if version not in (None, "") else "")
    )
    metrics = folder / "metrics.csv"
    if not metrics.exists():
        return None
    n = 1
    while (folder / f"metrics.{n}.csv").exists():
        n += 1
    kept = folder / f"metrics.{n}.csv"
    metrics.rename(kept)
    log.info("resuming: the earlier metrics are kept in %s", kept)
    return kept


def use_run_data_dir(output_dir: Path) -> Path:
    """Point `WANDB_DATA_DIR` at `<output_dir>/wandb/data`, where wandb stages table media (process-wide: wandb
    reads only the environment; each run of a multirun sets its own folder before its run starts).
    """
    data_dir = output_dir / "wandb" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_DATA_DIR"] = str(data_dir.resolve())
    return data_dir


def restore_csv_metrics(kept: list[Path]) -> None:
    """Undo `keep_csv_metrics` for a resume that stopped before logging anything (refused on its checkpoint or
    settings): the earlier `metrics.csv` goes back under its name, as if the run had not started.
    """
    for path in kept:
        metrics = path.parent / "metrics.csv"
        if path.exists() and not metrics.exists():
            path.rename(metrics)


def build_loggers(cfg: DictConfig, resuming: bool = False, kept: list[Path] | None = None) -> list[Any]:
    """Instantiate every node under `cfg.logger` (a resumed run keeps the earlier CSV metrics beside the new; the
    files moved aside are appended to `kept`, for `restore_csv_metrics`).
    """
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        if resuming and node.get("_target_") == CSV_TARGET and is_rank_zero():
            moved = keep_csv_metrics(node)
            if moved is not None and kept is not None:
                kept.append(moved)
        is_wandb = node.get("_target_") == WANDB_TARGET
        extra = wandb_kwargs(node, Path(cfg.paths.output_dir), resuming) if is_wandb else {}
        if is_wandb:
            use_run_data_dir(Path(cfg.paths.output_dir))
        logger = instantiate(node, **extra)
        if is_wandb and is_rank_zero():
            # `config` cannot go through instantiate (it is the name of instantiate's own first parameter).
            fields = {**run_fields(cfg), "cfg": OmegaConf.to_container(cfg, resolve=True)}
            logger.experiment.config.update(fields, allow_val_change=True)
        loggers.append(logger)
    return loggers


def finish_wandb(failed: bool) -> None:
    """Close the active wandb run, if any (exit code 1 when training raised)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)
