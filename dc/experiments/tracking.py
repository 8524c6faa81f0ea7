"""Weights & Biases records of a study: one run per sweep point (its flat fields as config, its benchmark metrics
as summary) and one run holding the collected table (a `wandb.Table`) and its plot.

Both follow the training runs' conventions (`dc.training.loggers`): offline without credentials, grouped per
sweep, staged media inside the run folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dc.training.loggers import use_run_data_dir, wandb_kwargs, wandb_mode


def log_point(node: DictConfig, out_dir: Path, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """One wandb run (job type "point") for a finished sweep point.

    Args:
        node: the `logger.wandb` config node (project, group, tags).
        out_dir: the point's folder (the run's files go to `<out_dir>/wandb`).
        name: the run name.
        record: the point's `point.json` record.

    Returns:
        What the run holds: `{"id", "dir", "group", "config", "summary"}` (read before it is finished).
    """
    import wandb

    extra = wandb_kwargs(node, out_dir, resuming=True)  # same id when a requeued point logs again
    use_run_data_dir(out_dir)
    run = wandb.init(
        project=node.get("project", "dense-connector"),
        group=node.get("group") or extra.get("group"),
        name=name,
        job_type="point",
        tags=[str(t) for t in node.get("tags") or []],
        dir=str(out_dir),
        id=extra.get("id"),
        resume=extra.get("resume", "allow"),
        mode=wandb_mode(),
        config={**record["fields"], "overrides": record.get("overrides", [])},
    )
    try:
        run.summary.update({**record["metrics"], "status": record["status"]})
        held = {
            "id": run.id,
            "dir": run.dir,
            "group": run.group,
            "config": dict(run.config),
            "summary": dict(run.summary),
        }
    finally:
        run.finish()
    return held


def table_rows(table: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows for a flat table (wandb): labels, then mean and std of each metric, then n."""
    columns = [*table["label_columns"]]
    for metric in table["metrics"]:
        columns += [f"{metric} mean", f"{metric} std"]
    columns.append("seeds ok")
    rows = []
    for row in table["rows"]:
        values: list[Any] = [row["labels"][k] for k in table["label_columns"]]
        for metric in table["metrics"]:
            cell = row["cells"].get(metric)
            values += [
                cell["mean"] if cell else math.nan,
                (cell["std"] if cell and cell["std"] is not None else math.nan),
            ]
        values.append(row["ok"])
        rows.append(values)
    return columns, rows


def log_collected(sweep_dir: Path, collected: dict[str, Any], project: str = "dense-connector") -> str:
    """One wandb run (job type "collect") with the table as `results` (a wandb Table) and the plot; returns its dir.

    The group is the one the sweep's own runs were logged under (`collect.wandb_group`).
    """
    import wandb

    sweep_dir = Path(sweep_dir)
    table = collected["table"]
    out_dir = sweep_dir / "collect"
    out_dir.mkdir(parents=True, exist_ok=True)
    use_run_data_dir(out_dir)
    run = wandb.init(
        project=project,
        group=table["group"],
        name=f"collect-{sweep_dir.name}",
        job_type="collect",
        dir=str(out_dir),
        mode=wandb_mode(),
        config={"sweep": str(sweep_dir), "metrics": table["metrics"]},
    )
    try:
        columns, rows = table_rows(table)
        payload: dict[str, Any] = {"results": wandb.Table(columns=columns, data=rows)}
        png = collected["paths"].get("png")
        if png is not None:
            payload["plot"] = wandb.Image(str(png))
        run.log(payload)
        if collected["problems"]:
            run.summary["problems"] = collected["problems"]
        return run.dir
    finally:
        run.finish()
