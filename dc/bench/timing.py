"""Interleaved timing: warm-up, then repeats that alternate between the configurations of one figure.

Alternating A/B/A/B inside one process means a busy phase of a shared machine hits every side alike. Each call is
timed twice: wall clock and this process's CPU time (`time.process_time`). On a contended CPU box the wall time of
one identical step swings several-fold while its CPU time (with one torch thread) barely moves, so on CPU the
headline ratio is the median of the per-round paired ratios of CPU time; on CUDA it is the same on wall time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

Step = Callable[[], None]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stats(samples: list[float]) -> dict[str, float | list[float]]:
    """Min / median / max of a list of seconds (and the raw samples)."""
    return {
        "min": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
        "samples": list(samples),
    }


def interleaved(steps: dict[str, Step], warmup: int, repeats: int, device: torch.device) -> dict[str, dict]:
    """Time each step `repeats` times, alternating sides, after `warmup` untimed calls of each.

    The order within a round rotates so no side always runs right after another particular one. Returns per side
    the wall-clock stats, plus `cpu` (CPU-time stats) and `clock` (which of the two the ratios use).
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    _sync(device)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[name]()
            _sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    clock = "wall" if device.type == "cuda" else "cpu"
    return {name: {**stats(wall[name]), "cpu": stats(cpu[name]), "clock": clock} for name in names}


def ratio(a: dict, b: dict) -> dict[str, float]:
    """A / B: `median` = median of the per-round paired ratios (the headline), `of_medians`, `min` (of minima).

    Computed on CPU time on CPU, on wall time on CUDA (see the module docstring); `wall_of_medians` is always the
    plain wall-clock ratio of medians, for reference.
    """
    sa, sb = (a["cpu"], b["cpu"]) if a.get("clock") == "cpu" else (a, b)
    paired = [x / y for x, y in zip(sa["samples"], sb["samples"], strict=True)]
    return {
        "median": statistics.median(paired),
        "of_medians": sa["median"] / sb["median"],
        "min": sa["min"] / sb["min"],
        "wall_of_medians": a["median"] / b["median"],
        "paired": paired,
    }


def profile_top(step: Step, rows: int = 10) -> list[dict[str, float | str]]:
    """Run `step` once under `torch.profiler` and return the top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1.0
    return [
        {
            "op": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 1000.0,
            "self_cpu_pct": 100.0 * e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events
    ]
