"""The collected table as a grouped bar chart: one group per metric, one bar per configuration (mean, ± std error
bar), each seed's value as a dot. matplotlib is optional (`pip install '.[experiments]'`): without it no PNG.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def plot_table(table: dict[str, Any], path: Path, title: str = "") -> Path | None:
    """Draw `table` (from `collect.aggregate`) into `path` (PNG); return the path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a display
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install '.[experiments]')")
        return None
    metrics = table["metrics"]
    rows = table["rows"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(metrics) * max(1, len(rows)) ** 0.5), 4.0))
    for r, row in enumerate(rows):
        label = " ".join(v for k, v in row["labels"].items() if k != "tokens" and v != "–") or f"config {r}"
        xs, means, stds = [], [], []
        for m, metric in enumerate(metrics):
            cell = row["cells"].get(metric)
            if cell is None:
                continue
            x = m + (r - (len(rows) - 1) / 2) * width
            xs.append(x)
            means.append(cell["mean"])
            stds.append(cell["std"] or 0.0)
            ax.scatter([x] * len(cell["values"]), list(cell["values"].values()), s=8, color="black", zorder=3)
        ax.bar(xs, means, width=width * 0.95, yerr=stds, capsize=2, label=label)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([m.split("/", 1)[-1] for m in metrics], rotation=20, ha="right")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="best")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # a reader never sees half a PNG
    fig.savefig(partial, dpi=120, format="png")
    plt.close(fig)
    os.replace(partial, path)
    return path
