"""Write benchmark results as JSON and as a markdown table, atomically.

Atomic = write a temp file in the target folder, fsync, then ``os.replace``: a reader (or a crash)
never sees a half-written report.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file + ``os.replace``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave the temp file behind on failure.
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def flatten_metrics(result: Mapping[str, Any], sep: str = "/") -> dict[str, float]:
    """Flatten ``metrics`` and ``breakdown`` of one result into ``{"a/b/c": float}`` (for loggers)."""
    flat: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            flat[prefix] = float(node)

    walk("", result.get("metrics", {}))
    walk("breakdown", result.get("breakdown", {}))
    return flat


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def results_markdown(
    results: Mapping[str, Mapping[str, Any]],
    *,
    title: str = "Evaluation results",
    meta: Mapping[str, Any] | None = None,
) -> str:
    """Render ``{benchmark: result}`` as markdown.

    A summary table comes first, then one table per benchmark with its headline metrics and the
    flattened breakdown.

    Args:
        results: Result dicts from ``Benchmark.score`` keyed by benchmark name.
        title: Heading.
        meta: Extra key/values listed under the heading (checkpoint, config); machine and date are
            always added so a reader knows where the numbers came from.
    """
    info = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.node(), **dict(meta or {})}
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [
        "",
        "| benchmark | status | main metric | value | records | answered | skipped |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        main = res.get("main_metric")
        value = res.get("metrics", {}).get(main) if main else None
        c = res.get("counts", {})
        lines.append(
            f"| {name} | {res.get('status', '')} | {main or '-'} | "
            f"{_fmt(value) if value is not None else '-'} | {c.get('records', '-')} | "
            f"{c.get('answered', '-')} | {c.get('skipped_total', 0)} |"
        )
    for name, res in results.items():
        lines += ["", f"## {name}", ""]
        values = flatten_metrics(res)  # headline metrics first, then "breakdown/<group>/<key>"
        if values:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in values.items()]
        skipped = res.get("counts", {}).get("skipped", {})
        if skipped:
            lines += ["", "Skipped: " + ", ".join(f"{k}={v}" for k, v in skipped.items())]
        for note in res.get("notes", []):
            lines += ["", f"> {note}"]
    return "\n".join(lines) + "\n"


def write_report(
    results: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    *,
    stem: str = "results",
    title: str = "Evaluation results",
    meta: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``{stem}.json`` and ``{stem}.md`` into ``out_dir`` atomically.

    Returns:
        ``(json_path, markdown_path)``.
    """
    out_dir = Path(out_dir)
    j = atomic_write_json(out_dir / f"{stem}.json", {"meta": dict(meta or {}), "results": dict(results)})
    m = atomic_write_text(out_dir / f"{stem}.md", results_markdown(results, title=title, meta=meta))
    return j, m
