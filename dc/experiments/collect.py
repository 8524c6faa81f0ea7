"""Gather a sweep's points into the paper-shaped table and plot: `python -m dc.experiments.collect <sweep dir>`.

Rows are the swept configurations (every override that differs between points, the seed and the overrides that only
say how a point runs excepted: `dc.experiments.recipe.is_runtime_override`), columns the chosen benchmark metrics
as mean ± sample std over seeds (n = seeds with results). Values are read from each point's own results files
(`eval/<name>/<benchmark>_results.json`); the overrides the results were made with, and the flat fields
(connector, layers/groups, visual tokens, ...), from its `point.json` (Hydra's `.hydra/overrides.yaml` holds those
of the last command run in the folder, which may have been refused). Written beside the sweep (or into `--out`):
`table.md`, `table.json` and `table.png`. Points that are missing (a sweep job that never started, known from
Hydra's `multirun.yaml`), failed, or still without results are listed under the table, never silently dropped.

Works on Hydra multirun folders (`multirun/<time>/<n>-<name>/`) and on `scripts/sweep_torchrun.sh` folders
(one run folder per point, each with its `.hydra/overrides.yaml`).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dc.eval.benchmarks.report import atomic_write_json, atomic_write_text, flatten_metrics
from dc.experiments.plot import plot_table
from dc.experiments.recipe import FROM_KEY, POINT_FILE, SETTINGS_FILE, STEPS, digest, is_runtime_override
from dc.pipeline import user_errors
from dc.training.loggers import sweep_group
from dc.utils.cli import errors_as_messages
from dc.utils.errors import ConfigError

log = logging.getLogger(__name__)

SEED_KEY = "seed"


@dataclass
class Point:
    """One sweep point's folder, what it was run with and what it produced."""

    dir: Path
    overrides: list[str]
    record: dict[str, Any] | None
    metrics: dict[str, float]
    main_metrics: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """Ok | failed | running (started, never finished) | no results."""
        if self.record is not None and self.record.get("status") != "ok":
            return str(self.record.get("status"))
        return "ok" if self.metrics else "no results"


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def scored_on_this_model(point_dir: Path, eval_dir: Path) -> bool:
    """Whether a benchmark folder was scored on the model the point's last stage holds now: its `settings.json`
    names the digest of that stage's settings (`made_from.<stage>`). A benchmark dropped from a recipe whose
    stage 2 was then redone keeps its folder, scored on the old model. Folders without settings pass.
    """
    stage = point_dir / STEPS[-1] / SETTINGS_FILE
    scored = eval_dir / SETTINGS_FILE
    if not (stage.exists() and scored.exists()):
        return True
    made_from = json.loads(scored.read_text())["settings"].get(f"{FROM_KEY}.{STEPS[-1]}")
    return made_from is None or made_from == digest(json.loads(stage.read_text())["settings"])


def read_point(point_dir: Path) -> Point:
    """A point folder: `point.json`, the overrides its results were made with (`point.json`'s, else
    `.hydra/overrides.yaml`) and its results files' metrics.
    """
    record_file = point_dir / POINT_FILE
    record = json.loads(record_file.read_text()) if record_file.exists() else None
    overrides_file = point_dir / ".hydra" / "overrides.yaml"
    if record is not None and record.get("overrides") is not None:
        overrides = [str(o) for o in record["overrides"]]
    elif overrides_file.exists():
        # plain YAML, not OmegaConf: the strings exactly as Hydra wrote them (`$\{x\}` stays escaped)
        overrides = [str(o) for o in yaml.safe_load(overrides_file.read_text()) or []]
    else:
        overrides = []
    metrics: dict[str, float] = {}
    main: list[str] = []
    for path in sorted(point_dir.glob("eval/*/*_results.json")):
        if not scored_on_this_model(point_dir, path.parent):
            log.warning("%s: scored on another model than %s's stage 2 now holds; left out", path, point_dir.name)
            continue
        for bench, result in json.loads(path.read_text())["results"].items():
            metrics.update({f"{bench}/{k}": v for k, v in flatten_metrics(result).items()})
            if result.get("main_metric"):
                main.append(f"{bench}/{result['main_metric']}")
    return Point(point_dir, overrides, record, metrics, main)


def find_points(sweep_dir: Path) -> list[Point]:
    """Every point folder under `sweep_dir` (one holding `.hydra/overrides.yaml` or `point.json`), in sweep order."""
    dirs = {p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")}
    dirs |= {p.parent for p in sweep_dir.glob(f"*/{POINT_FILE}")}

    def order(path: Path) -> tuple[int, str]:
        head = path.name.split("-", 1)[0]
        return (int(head), path.name) if head.isdigit() else (1 << 30, path.name)

    return [read_point(d) for d in sorted(dirs, key=order)]


def expected_overrides(sweep_dir: Path) -> list[list[str]] | None:
    """The override lists of every job the sweep launched, from Hydra's `multirun.yaml` (None when there is none).

    Re-derives the basic sweeper's cartesian product (the experiment's `hydra.sweeper.params` plus the command
    line's sweeps), so a job that never started is known by its overrides.
    """
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = (yaml.safe_load(path.read_text()) or {}).get("hydra") or {}
    params = (hydra_cfg.get("sweeper") or {}).get("params") or {}
    task = (hydra_cfg.get("overrides") or {}).get("task") or []
    arguments = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in task]
    overrides = OverridesParser.create().parse_overrides(arguments)
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    return [list(job) for job in batch]


def _results_overrides(overrides: list[str]) -> list[str]:
    """The overrides that decide a point's results: those that only say how it runs are dropped."""
    return sorted(o for o in overrides if not is_runtime_override(o))


def configuration(overrides: list[str], seed_key: str = SEED_KEY) -> tuple[str, ...]:
    """A point's configuration: its overrides that decide results (`_results_overrides`) without the seed, in a
    canonical order.
    """
    return tuple(o for o in _results_overrides(overrides) if _split(o)[0] != seed_key)


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _choose_metrics(points: list[Point], patterns: list[str] | None) -> list[str]:
    """The metric columns: those matching `patterns`, else each benchmark's headline metric.

    Raises:
        ConfigError: a pattern matches none of the metrics the points have (when they have any).
    """
    available: list[str] = []
    for p in points:
        available += [k for k in p.metrics if k not in available]
    if not patterns:  # each benchmark's headline metric
        chosen: list[str] = []
        for p in points:
            chosen += [k for k in p.main_metrics if k not in chosen]
        return chosen
    chosen = []
    for pattern in patterns:
        matched = [k for k in available if fnmatch.fnmatchcase(k, pattern)]
        if available and not matched:
            raise ConfigError(f"--metrics {pattern}: matches none of the sweep's metrics ({', '.join(available)})")
        chosen += [k for k in matched if k not in chosen]
    return chosen


def check_seed_key(points: list[Point], seed_key: str) -> None:
    """`seed_key` is an override of some point (else no row would average over seeds).

    Raises:
        ConfigError: naming the override keys the points have.
    """
    keys = sorted({_split(o)[0] for p in points for o in _results_overrides(p.overrides)})
    if seed_key not in keys:
        raise ConfigError(
            f"--seed-key {seed_key}: no point has an override {seed_key}=... (their keys: {', '.join(keys) or 'none'})"
        )


def _layers(fields: dict[str, Any]) -> str:
    if fields.get("groups") is not None:
        return " + ".join(f"{a}–{b}" for a, b in fields["groups"])
    if fields.get("layers") is not None:
        return ", ".join(str(v) for v in fields["layers"])
    return "–"


def aggregate(points: list[Point], metrics: list[str] | None = None, seed_key: str = SEED_KEY) -> dict[str, Any]:
    """The table as data: `{"label_columns", "metrics", "rows": [{"labels", "cells": {metric: {...}}, ...}]}`.

    A row per configuration, in the order the sweep ran them; a cell holds the mean, the sample std (None for
    one seed), n and the values per seed. Only points whose status is ok contribute.
    """
    chosen = _choose_metrics(points, metrics)
    configs: dict[tuple[str, ...], list[Point]] = {}
    for p in points:
        configs.setdefault(configuration(p.overrides, seed_key), []).append(p)
    all_keys = sorted({_split(o)[0] for c in configs for o in c})
    varying = [k for k in all_keys if len({dict(map(_split, c)).get(k) for c in configs}) > 1]
    rows = []
    for config, members in configs.items():
        values = dict(map(_split, config))
        ok = [p for p in members if p.status == "ok"]
        fields = next((p.record["fields"] for p in members if p.record and p.record.get("fields")), {})
        labels = {k: values.get(k, "–") for k in varying}
        labels["layers"] = _layers(fields)
        labels["tokens"] = str(fields.get("visual_tokens", "–"))
        cells = {}
        for metric in chosen:
            seeds = {
                str(dict(map(_split, p.overrides)).get(seed_key, "?")): p.metrics[metric]
                for p in ok
                if metric in p.metrics
            }
            if seeds:
                mean, std = _mean_std(list(seeds.values()))
                cells[metric] = {"mean": mean, "std": std, "n": len(seeds), "values": seeds}
        rows.append({"labels": labels, "cells": cells, "points": len(members), "ok": len(ok)})
    return {"label_columns": [*varying, "layers", "tokens"], "metrics": chosen, "rows": rows}


def problems(points: list[Point], expected: list[list[str]] | None) -> list[str]:
    """One line per point that did not give results: failed, unfinished, or never started."""
    lines = []
    for p in points:
        if p.status != "ok":
            error = (p.record or {}).get("error")
            lines.append(f"{p.dir.name}: {p.status}" + (f" ({error})" if error else ""))
    if expected is not None:
        seen = {tuple(_results_overrides(p.overrides)) for p in points}
        for job in expected:
            if tuple(_results_overrides(job)) not in seen:
                lines.append(f"missing (never started): {' '.join(job)}")
    return lines


def _cell(cell: dict[str, Any] | None, expected_n: int) -> str:
    if cell is None:
        return "–"
    text = f"{cell['mean']:.1f}" if cell["std"] is None else f"{cell['mean']:.1f} ± {cell['std']:.1f}"
    return text if cell["n"] == expected_n else f"{text} (n={cell['n']})"


def to_markdown(table: dict[str, Any], issues: list[str], title: str) -> str:
    """The table as markdown: label columns, one column per metric, a seeds column; then the problems."""
    seeds = max((r["points"] for r in table["rows"]), default=0)
    head = [*table["label_columns"], *table["metrics"], "seeds ok"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["rows"]:
        cells = [_cell(row["cells"].get(m), seeds) for m in table["metrics"]]
        labels = [row["labels"][k] for k in table["label_columns"]]
        lines.append("| " + " | ".join([*labels, *cells, f"{row['ok']}/{row['points']}"]) + " |")
    lines += ["", f"Mean ± sample standard deviation over seeds ({seeds} per configuration)."]
    if issues:
        lines += ["", "Points without results:", ""] + [f"- {line}" for line in issues]
    return "\n".join(lines) + "\n"


def collect(
    sweep_dir: str | Path,
    metrics: list[str] | None = None,
    out: str | Path | None = None,
    seed_key: str | None = None,
) -> dict[str, Any]:
    """Write `table.md`, `table.json` and `table.png` for the sweep in `sweep_dir` (into `out`, default: beside it).

    Args:
        sweep_dir: the sweep folder.
        metrics: metric keys or glob patterns; each must match a metric of the points (default: headline metrics).
        out: where the table goes.
        seed_key: the override that varies over repeats; given, some point must have it (default: `seed`, if any).

    Returns:
        `{"table", "problems", "paths": {"md", "json", "png"}}` (png None when matplotlib is missing).
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    points = find_points(sweep_dir)
    if not points:
        raise FileNotFoundError(f"{sweep_dir}: no sweep points (folders with .hydra/overrides.yaml or {POINT_FILE})")
    if seed_key is not None:
        check_seed_key(points, seed_key)
    table = aggregate(points, metrics, seed_key or SEED_KEY)
    issues = problems(points, expected_overrides(sweep_dir))
    out_dir = Path(out) if out is not None else sweep_dir
    table["group"] = wandb_group(sweep_dir, points)
    md = atomic_write_text(out_dir / "table.md", to_markdown(table, issues, f"Sweep {sweep_dir.name}"))
    js = atomic_write_json(out_dir / "table.json", {"sweep": str(sweep_dir), **table, "problems": issues})
    png = plot_table(table, out_dir / "table.png", title=sweep_dir.name)
    return {"table": table, "problems": issues, "paths": {"md": md, "json": js, "png": png}}


def wandb_group(sweep_dir: Path, points: list[Point]) -> str:
    """The wandb group the sweep's runs were logged under: a Hydra multirun's `<experiment>-<folder>` (as
    `dc.training.loggers` names it), else the folder name (`scripts/sweep_torchrun.sh` sets WANDB_RUN_GROUP to it).
    """
    if not (sweep_dir / "multirun.yaml").exists():
        return sweep_dir.name
    experiment = next(
        (p.record["fields"].get("experiment") for p in points if p.record and p.record.get("fields")), None
    )
    return sweep_group(experiment, sweep_dir)


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m dc.experiments.collect <sweep dir> [--metrics PATTERN ...] [--out DIR] [--wandb]`."""
    parser = argparse.ArgumentParser(prog="python -m dc.experiments.collect", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metrics", nargs="+", help="metric keys or glob patterns (default: headline metrics)")
    parser.add_argument("--out", type=Path, help="folder for table.md/.json/.png (default: the sweep folder)")
    parser.add_argument("--seed-key", help=f"the override that varies over repeats (default: {SEED_KEY})")
    parser.add_argument("--wandb", action="store_true", help="also log the table and plot to a wandb run")
    parser.add_argument("--project", default="dense-connector", help="wandb project (with --wandb)")
    args = parser.parse_args(argv)
    with errors_as_messages(user_errors()):  # the message names the option or folder: no traceback
        result = collect(args.sweep_dir, args.metrics, args.out, args.seed_key)
    print(result["paths"]["md"].read_text())
    if args.wandb:
        from dc.experiments.tracking import log_collected

        log_collected(args.sweep_dir, result, project=args.project)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
