"""CLI: `python -m dc.bench --mode quick|full [--only P1,P3] [--out docs/benchmarks.md] [--tiny]`.

`--mode gpu --part 1|2 [--out-dir DIR]` runs the GPU benchmark (`dc.bench.gpu`, CUDA only unless `--tiny`),
writing `DIR/gpu_part<n>.json` after every section; `--from-json docs/benchmarks.json --gpu-json
DIR/gpu_part1.json DIR/gpu_part2.json` re-renders `--out` with those GPU results added to the recorded ones
(`--replace-gpu`: only those). The recorded report (`docs/benchmarks.md`, the default `--out`) is replaced only by a
complete run that measures; a partial (`--only`), `--tiny` or CPU `--mode full` run needs its own `--out`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dc.bench import recorded
from dc.bench.infer_figures import run_p3
from dc.bench.memory_figures import run_p8, run_p9, run_p10
from dc.bench.mfu_figure import run_p5
from dc.bench.report import describe, write
from dc.bench.shapes import shape_for
from dc.bench.train_figures import run_p1, run_p4, run_p7

MEASURED: dict[str, Callable[..., dict[str, Any]]] = {"P1": run_p1, "P3": run_p3, "P4": run_p4, "P7": run_p7}
ALL = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10")
ROWS = {"P8": run_p8, "P9": run_p9, "P10": run_p10}  # CPU-measurable memory/padding figures (same on any device)
DEFAULT_OUT = Path("docs/benchmarks.md")  # the project's recorded report
REPEATS = {"quick": (1, 15), "full": (3, 10)}  # (warm-up, repeats): P1 varies ±15 % per round on a shared CPU


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dc.bench", description=__doc__)
    p.add_argument("--mode", choices=("quick", "full", "gpu"), default="quick")
    p.add_argument("--part", type=int, choices=(1, 2), default=None, help="gpu mode: which part (default: both)")
    p.add_argument("--out-dir", type=Path, default=None, help="gpu mode: JSON folder (default: $OUT or ./gpu_results)")
    p.add_argument("--sections", default=None, help="gpu mode: comma-separated sections to run (default: all)")
    p.add_argument(
        "--gpu-json",
        type=Path,
        nargs="*",
        default=None,
        help="with --from-json: GPU results to add to the recorded ones (a part already recorded is not repeated)",
    )
    p.add_argument(
        "--replace-gpu", action="store_true", help="with --gpu-json: keep only these GPU results, drop the recorded"
    )
    p.add_argument("--only", default=",".join(ALL), help="comma-separated figures, e.g. P1,P3")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"report (and its .json beside it); default {DEFAULT_OUT}, written only by a complete run that measures",
    )
    p.add_argument("--tiny", action="store_true", help="smallest shapes (smoke test; numbers meaningless)")
    p.add_argument(
        "--peak-device",
        choices=("a100", "h100_sxm", "h200"),
        default=None,
        help="bf16 peak used for P5's MFU (explicit table, no device-name guessing)",
    )
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument(
        "--from-json", type=Path, default=None, help="re-render --out from an earlier run's JSON (no measurement)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 in quick mode, so CPU time is one thread's work; all cores in full)",
    )
    return p.parse_args(argv)


def _tiny_rows(key: str) -> dict[str, Any]:
    """The P8–P10 figures at toy sizes (smoke test)."""
    if key == "P8":
        return run_p8(tokens=64, dim=8, vocab=512)
    if key == "P9":
        return run_p9(tokens=16, width=32, heads=2, kv_heads=2, mlp=64)
    return run_p10()


def _read_json(path: Path, option: str) -> Any:
    """A JSON file named by `option`, or a one-line exit naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: {option} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: {option} {path}: not a JSON file written by dc.bench ({exc})") from None


def _why_not_the_default_report(args: argparse.Namespace, only: list[str], cuda: bool) -> str | None:
    """Why this run must not replace the recorded report (`DEFAULT_OUT`), or None: only a complete run that
    measures may (a partial, tiny or unmeasurable run would drop the recorded figures).
    """
    if args.tiny:
        return "--tiny numbers are meaningless"
    if set(only) != set(ALL):
        return f"--only {','.join(only)} measures part of the report, and the rest would be dropped"
    if args.mode == "full" and not cuda:
        return "--mode full without a CUDA device measures nothing (its figures would read 'not yet measured')"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.repeats is not None and args.repeats < 1 or args.warmup is not None and args.warmup < 0:
        raise SystemExit("error: --repeats must be >= 1 and --warmup >= 0")
    if (args.gpu_json is not None or args.replace_gpu) and args.from_json is None:
        raise SystemExit("error: --gpu-json and --replace-gpu go with --from-json (the report they are added to)")
    if args.replace_gpu and not args.gpu_json:
        raise SystemExit("error: --replace-gpu needs --gpu-json (the GPU results to keep instead of the recorded)")
    if args.from_json is not None:
        out = args.out or DEFAULT_OUT
        data = _read_json(args.from_json, "--from-json")
        if not isinstance(data, dict) or "meta" not in data or "figures" not in data:
            raise SystemExit(f"error: --from-json {args.from_json}: not a report JSON written by dc.bench")
        new = [_read_json(p, "--gpu-json") for p in args.gpu_json or []]
        recorded_gpu = [] if args.replace_gpu else list(data.get("gpu") or [])
        gpu = recorded_gpu + [part for part in new if part not in recorded_gpu]
        write(out, data["meta"], data["figures"], gpu=gpu or None)
        added = len(gpu) - len(recorded_gpu)
        print(f"re-rendered {out} from {args.from_json}" + (f", {added} GPU part(s) added" if new else ""))
        return 0
    if args.mode == "gpu":
        from dc.bench.gpu import run_part

        if not torch.cuda.is_available() and not args.tiny:
            raise SystemExit(
                "error: --mode gpu needs a CUDA device (this machine has none); --tiny runs its toy shapes anywhere"
            )

        out_dir = args.out_dir or Path(os.environ.get("OUT") or "gpu_results")
        sections = [s.strip() for s in args.sections.split(",")] if args.sections else None
        for part in [args.part] if args.part else [1, 2]:
            print(f"wrote {run_part(part, out_dir, tiny=args.tiny, only=sections)}")
        return 0
    only = [f.strip().upper() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(only) - set(ALL))
    if unknown:
        raise SystemExit(f"error: --only: unknown figures {unknown}; expected some of {list(ALL)}")
    if not only:
        raise SystemExit(f"error: --only names no figure; expected some of {list(ALL)}")
    cuda = args.mode == "full" and torch.cuda.is_available()
    if args.out is None and (why := _why_not_the_default_report(args, only, cuda)):
        raise SystemExit(f"error: not replacing {DEFAULT_OUT}: {why}; give --out (e.g. --out /tmp/bench.md)")
    out = args.out or DEFAULT_OUT
    device = torch.device("cuda" if cuda else "cpu")
    dtype = "bfloat16" if cuda else "float32"
    threads = args.threads or (1 if args.mode == "quick" else os.cpu_count() or 1)
    torch.set_num_threads(threads)
    warmup, repeats = REPEATS[args.mode]
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else warmup)
    repeats = args.repeats if args.repeats is not None else (1 if args.tiny else repeats)
    torch.manual_seed(0)
    started = time.perf_counter()
    figures: list[dict[str, Any]] = []
    for key in only:
        if key in MEASURED:
            if args.mode == "full" and not cuda:
                figures.append({"figure": key, "status": "not yet measured", "reason": "no cuda device"})
                continue
            shape = shape_for(args.mode, key, args.tiny)
            t0 = time.perf_counter()
            fig = MEASURED[key](shape, device, dtype, warmup, repeats)
            fig.update(
                status="measured",
                device=str(device),
                dtype=dtype,
                shape=describe(shape),
                warmup=warmup,
                repeats=repeats,
                wall_s=time.perf_counter() - t0,
            )
            figures.append(fig)
            print(f"{key}: " + ", ".join(f"{k} {v['median']:.3f}x" for k, v in fig["ratios"].items()), flush=True)
        elif key in ROWS:
            t0 = time.perf_counter()
            fig = _tiny_rows(key) if args.tiny else ROWS[key]()
            fig.update(device="cpu", wall_s=time.perf_counter() - t0)
            figures.append(fig)
            print(f"{key}: " + "; ".join(" | ".join(str(c) for c in row) for row in fig["rows"]), flush=True)
        elif key == "P2":
            figures.append(recorded.p2_encoder_memory(Path.cwd()))
        elif key == "P6":
            figures.append(recorded.p6_data_loader(Path.cwd()))
        elif key == "P5":
            if args.mode == "full" and not cuda:
                figures.append(recorded.p5_mfu())
                continue
            shape = shape_for(args.mode, key, args.tiny)
            fig = run_p5(shape, device, dtype, warmup, repeats, args.peak_device)
            fig.update(
                status="measured",
                device=str(device),
                dtype=dtype,
                shape=describe(shape),
                warmup=warmup,
                repeats=repeats,
            )
            figures.append(fig)
            rates = fig["rates"]
            mfu = "n/a" if rates["mfu"] is None else f"{100 * rates['mfu']:.1f} %"
            print(f"P5: {rates['tokens_per_s']:.0f} tokens/s, {rates['model_tflops_per_s']:.3f} TFLOP/s, MFU {mfu}")
    meta = {
        "command": "python -m dc.bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "mode": args.mode + (" (tiny)" if args.tiny else ""),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "load_average": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "dtype": dtype,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "python": platform.python_version(),
        "total_wall_s": f"{time.perf_counter() - started:.1f}",
    }
    previous = out.with_suffix(".json")
    gpu = json.loads(previous.read_text()).get("gpu") if previous.is_file() else None  # GPU runs are kept
    json_path = write(out, meta, figures, gpu=gpu)
    print(f"wrote {out} and {json_path}" + (f" (kept {len(gpu)} recorded GPU parts)" if gpu else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
