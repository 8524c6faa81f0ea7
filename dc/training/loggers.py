"""Loggers from the `logger` config, with the Weights & Biases conventions of this project.

* offline automatically when there is no API key (no `WANDB_API_KEY`, no `api.wandb.ai` entry in ~/.netrc) and
  `WANDB_MODE` is not set; sync later with `wandb sync <run dir>/wandb/offline-run-*`;
* group: `logger.wandb.group`, else `WANDB_RUN_GROUP` (set by `scripts/sweep_torchrun.sh`), else the
  `experiment=` choice, else the Hydra multirun sweep folder name;
* the run id is kept in `<run dir>/wandb_id.txt`, so resuming in the same folder continues the same wandb run;
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

from omegaconf import DictConfig

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


def _hydra_group() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
    except Exception:  # noqa: BLE001 - Hydra missing or not configured: no derived group
        return None
    experiment = hc.runtime.choices.get("experiment")
    if experiment and experiment != "null":
        return str(experiment)
    if str(hc.mode) == "RunMode.MULTIRUN":
        return Path(str(hc.sweep.dir)).name
    return None


def wandb_kwargs(node: DictConfig, output_dir: Path, resuming: bool) -> dict[str, Any]:
    """Extra `WandbLogger` arguments: offline mode, group and a stable run id."""
    extra: dict[str, Any] = {}
    if "WANDB_MODE" not in os.environ and not wandb_has_credentials():
        extra["offline"] = True
        log.info("no wandb credentials: logging offline (sync later with `wandb sync`)")
    if node.get("group") is None and not os.environ.get("WANDB_RUN_GROUP"):
        group = _hydra_group()
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
            if _is_rank_zero():
                output_dir.mkdir(parents=True, exist_ok=True)
                id_file.write_text(run_id)
    return extra


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def build_loggers(cfg: DictConfig, resuming: bool = False) -> list[Any]:
    """Instantiate every node under `cfg.logger`."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        extra = wandb_kwargs(node, Path(cfg.paths.output_dir), resuming) if node.get("_target_") == WANDB_TARGET else {}
        loggers.append(instantiate(node, **extra))
    return loggers


def finish_wandb(failed: bool) -> None:
    """Close the active wandb run, if any (exit code 1 when training raised)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)
