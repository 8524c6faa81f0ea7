"""Write the benchmark results as markdown (`docs/benchmarks.md`) and JSON (same stem, `.json`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dc.bench.shapes import SHAPES, FigureShape

GPU_FIGURES = {
    "P1": "P1 at GPU shapes (CLIP-L/336 + ~1B Llama, bf16)",
    "P3": "P3 at 7B on GPU (goal >= 3x prefill speed-up)",
    "P4": "P4 at GPU shapes (CLIP-L/336 + ~1B Llama, bf16)",
    "P5": "P5 MFU",
}


def _f(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}f}" if math.isfinite(x) else str(x)
    return "" if x is None else str(x)


def _row(name: str, s: dict, scale: float) -> str:
    return f"| {name} | {_f(s['min'] * scale)} | {_f(s['median'] * scale)} | {_f(s['max'] * scale)} | {len(s['samples'])} |"


def _times_table(title: str, unit: str, table: dict[str, dict], scale: float = 1.0) -> list[str]:
    lines = [f"| {title} | min ({unit}) | median ({unit}) | max ({unit}) | repeats |", "|---|---|---|---|---|"]
    for name, s in table.items():
        if "cpu" in s:  # training figures: CPU time (the ratio's clock on CPU) and wall time
            lines.append(_row(f"{name}, CPU time", s["cpu"], scale))
            lines.append(_row(f"{name}, wall", s, scale))
        else:
            lines.append(_row(name, s, scale))
    return lines


def verdict(goal: str, r: dict) -> str:
    """'met' / 'missed' on the headline, and whether every round agrees (else: inconclusive at this repeat count)."""
    parts = goal.split()
    if len(parts) != 2 or parts[0] not in ("<=", ">="):  # e.g. a GPU-only goal with a qualifier: no verdict
        return goal
    bound = float(parts[1])
    ok = (lambda x: x <= bound) if parts[0] == "<=" else (lambda x: x >= bound)
    head = "met" if ok(r["median"]) else "**missed**"
    rounds = [ok(x) for x in r.get("paired", [])]
    if rounds and (all(rounds) or not any(rounds)):
        return f"{goal}: {head} (every round agrees)"
    return f"{goal}: {head} on the median, but the rounds straddle the goal: inconclusive at {len(rounds)} repeats"


def _ratio_table(fig: dict) -> list[str]:
    lines = [
        "| ratio | **median of paired ratios** | ratio of medians | ratio of minima | wall: ratio of medians "
        "| per-round ratios | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in fig.get("ratios", {}).items():
        paired = ", ".join(_f(x, 2) for x in r.get("paired", []))
        goal = verdict(str(fig.get("goal", {}).get(name, "")), r)
        lines.append(
            f"| {name} | **{_f(r['median'])}×** | {_f(r.get('of_medians'))}× | {_f(r['min'])}× | "
            f"{_f(r.get('wall_of_medians'))} | {paired} | {goal} |"
        )
    return lines


def _profiles(fig: dict) -> list[str]:
    out = []
    for side, rows in fig.get("profiles", {}).items():
        out += [
            "",
            f"Profile of one `{side}` step (torch.profiler, top 10 by self CPU time):",
            "",
            "| op | self CPU (ms) | % | calls |",
            "|---|---|---|---|",
        ]
        out += [
            f"| `{r['op']}` | {_f(r['self_cpu_ms'], 1)} | {_f(r['self_cpu_pct'], 1)} | {r['calls']} |" for r in rows
        ]
    return out


def _measured(fig: dict) -> list[str]:
    lines = [f"### {fig['figure']}: {fig['title']}", ""]
    if fig.get("shape"):
        lines += [f"Shape: {fig['shape']}", ""]
    if fig.get("sides"):
        lines += [
            "Sides: "
            + "; ".join(f"`{k}` {v['visual_tokens']} visual tokens, seq {v['seq']}" for k, v in fig["sides"].items()),
            "",
        ]
    lines += _ratio_table(fig) + [""]
    if "times_s" in fig:
        clock = "CPU time" if fig.get("clock") == "cpu" else "wall"
        title = "time per call" if "cpu" in next(iter(fig["times_s"].values())) else f"time per call ({clock})"
        lines += _times_table(title, "ms", fig["times_s"], 1000.0) + [""]
    if "tokens_per_s" in fig:
        clock = "CPU time" if fig.get("clock") == "cpu" else "wall"
        lines += _times_table(f"decode (tokens per {clock} second)", "tok/s", fig["tokens_per_s"]) + [""]
    if "loss_abs_diff_before_training" in fig:
        lines += [
            f"|loss(ours) − loss(HF)| on the same batch before any step: "
            f"{fig['loss_abs_diff_before_training']:.2e} (same weights, same maths).",
            "",
        ]
    met = fig.get("goal_met")
    verdicts = [verdict(str(fig.get("goal", {}).get(k, "")), r) for k, r in fig.get("ratios", {}).items()]
    shaky = any("inconclusive" in v for v in verdicts)
    text = "n/a on this device" if met is None else ("yes" if met else "**no**")
    if shaky and met is not None:
        text += " on the median, but inconclusive: some per-round ratios fall on the other side of the goal"
    lines += [f"Goal met: {text}"]
    return lines + _profiles(fig) + [""]


def _recorded(fig: dict) -> list[str]:
    lines = [f"### {fig['figure']}: {fig['title']}", ""]
    if fig.get("status") != "recorded":
        return lines + [f"Source `{fig.get('source')}`: {fig.get('status')}.", ""]
    lines += [f"Not re-measured here. Source: `{fig['source']}` (measured {fig.get('date')}).", ""]
    if fig["figure"] == "P2":
        lines += [
            "| DCI feature path (batch 16, fp32, CLIP-L/336 shape, CPU) | carried / stock | tensor peak / stock "
            "| RSS peak / stock |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {_f(v['carried_ratio'])} | {_f(v['tensor_peak_ratio'])} | {_f(v['rss_peak_ratio'])} |"
            for k, v in fig["rows"].items()
        ]
    else:
        lines += ["| loader | samples/CPU-s vs baseline (median) | per-round ratios |", "|---|---|---|"]
        lines += [
            f"| {k} | **{_f(r['median'])}×** | {', '.join(_f(x, 2) for x in r['per_round'])} |"
            for k, r in fig["ratios"].items()
        ]
        lines += ["", "| padding fraction | value |", "|---|---|"]
        lines += [f"| {k} | {_f(v * 100, 1)} % |" for k, v in fig["padding"].items()]
        lines += ["", f"Machine: {fig.get('machine')}, torch {fig.get('torch')}; command `{fig.get('command')}`."]
    goals = ", ".join(f"{k} {v}" for k, v in fig["goal"].items())
    lines += ["", f"Goal ({goals}) met: {'yes' if fig.get('goal_met') else '**no**'}", ""]
    return lines


def _rates(fig: dict) -> list[str]:
    r = fig["rates"]
    mfu = "n/a (CPU, or no --peak-device)" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
    t = fig["times_s"]["dci"]
    return [
        f"### {fig['figure']}: {fig['title']}",
        "",
        f"Shape: {fig.get('shape')}",
        "",
        "| tokens/s | samples/s | model TFLOP/s | MFU | step time median (min–max) | goal |",
        "|---|---|---|---|---|---|",
        f"| {r['tokens_per_s']:.1f} | {r['samples_per_s']:.2f} | {r['model_tflops_per_s']:.4f} | {mfu} | "
        f"{_f(t['median'])} s ({_f(t['min'])}–{_f(t['max'])}) | {fig['goal']['mfu']} |",
        "",
        "An absolute rate, not a ratio: on a shared CPU it is indicative only; the MFU goal concerns GPUs.",
        "",
    ]


def render(meta: dict[str, Any], figures: list[dict[str, Any]]) -> str:
    """The markdown report."""
    lines = [
        "# Benchmarks",
        "",
        "Generated by `dc.bench` (`dc/bench/`); do not edit by hand — rerun the command below.",
        "Every measured figure is a **ratio of two configurations timed interleaved in one process** "
        "(warm-up, then repeats alternating the sides, rotating the order each round; min / median / max per "
        "side). Each call is timed on the wall clock and on the process's CPU time. On CPU the headline is the "
        "**median of the per-round paired ratios of CPU time** with one torch thread: the shared 2-core box is "
        "busy with other jobs, and an identical step's wall time swings several-fold there (see the wall rows) "
        "while its CPU time does not. On CUDA the same ratio is taken on wall time. Absolute times are not "
        "speed results; only the ratios are.",
        "",
        "| run | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in meta.items()]
    lines.append("")
    lines.append("## Measured in this run")
    lines.append("")
    for fig in figures:
        if fig.get("status") in ("recorded", "missing"):
            continue
        if fig.get("status") == "not yet measured":
            continue
        lines += _rates(fig) if "rates" in fig else _measured(fig)
    lines += ["## Recorded elsewhere (included, not re-measured)", ""]
    for fig in figures:
        if fig.get("status") in ("recorded", "missing"):
            lines += _recorded(fig)
    lines += ["## GPU figures", "", "| figure | status |", "|---|---|"]
    gpu_done = {f["figure"] for f in figures if f.get("device", "").startswith("cuda")}
    for key, what in GPU_FIGURES.items():
        lines.append(f"| {what} | {'measured above' if key in gpu_done else 'not yet measured'} |")
    lines += [
        "",
        "`python -m dc.bench --mode full` implements them (cuda, bf16); it has not been run on a GPU yet, "
        "and no number here is an estimate. P5's MFU needs `--peak-device`. Full-mode shapes "
        "(`dc/bench/shapes.py`):",
        "",
    ]
    lines += [f"- {key}: {describe(shape)}" for key, shape in SHAPES["full"].items()]
    lines.append("")
    return "\n".join(lines)


def describe(shape: FigureShape) -> str:
    """One line: the ViT, the LLM and the token budget of a figure."""
    v, m = shape.vit, shape.llm
    return (
        f"ViT {v.num_layers}×{v.hidden_size} (MLP {v.mlp}, {v.heads} heads), image {v.image_size}/patch "
        f"{v.patch_size} = {v.grid_tokens} patches, frozen; LLM Llama {m.num_layers}×{m.hidden_size} "
        f"(MLP {m.mlp}, {m.heads} heads); batch {shape.batch}, seq {shape.seq}"
        + (f", {shape.new_tokens} new tokens" if shape.new_tokens else "")
    )


def write(out: Path, meta: dict[str, Any], figures: list[dict[str, Any]]) -> Path:
    """Write `out` (markdown) and its `.json` twin; return the JSON path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(meta, figures))
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps({"meta": meta, "figures": figures}, indent=1) + "\n")
    return json_path
