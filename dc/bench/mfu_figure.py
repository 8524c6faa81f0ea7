"""P5: tokens/s, model TFLOP/s and MFU of a DCI training step.

Model FLOPs come from the training-side formulas (`dc.training.throughput`): `mfu` in torchtitan's convention
(dense 6·N·D-style FLOPs + attention scores), `mfu_no_attention` (6·N·D only) and `hfu` (+ what activation
checkpointing recomputes). MFU needs a peak, chosen explicitly with `--peak-device` from the same table the
training callback uses (never guessed from the device name); without one, or on CPU, only rates are reported.
"""

from __future__ import annotations

from typing import Any

import torch

from dc.bench.build import build_vlm, make_batch
from dc.bench.shapes import FigureShape
from dc.bench.timing import interleaved
from dc.bench.train_figures import train_step
from dc.training.throughput import flops_spec, resolve_peak_flops

P5_GOAL = 0.45  # on an H100, bf16, seq 2048, ~1B LLM


def run_p5(
    shape: FigureShape, device: torch.device, dtype: str, warmup: int, repeats: int, peak_device: str | None
) -> dict[str, Any]:
    """Time DCI training steps and turn the median into tokens/s, TFLOP/s and (with a peak) MFU."""
    vlm = build_vlm("dci", shape.vit, shape.llm, dtype).to(device)
    vlm.encoder.requires_grad_(False)
    vlm.train()
    text = shape.seq - vlm.num_visual_tokens
    batch = make_batch(vlm, shape.batch, text, device)
    times = interleaved({"dci": train_step(vlm, batch)}, warmup, repeats, device)["dci"]
    seconds = float(times["median"])
    seq_lens = [int(n) for n in batch["attention_mask"].sum(1).tolist()]
    tokens = sum(seq_lens)
    counts = flops_spec(vlm).flops(tokens, int(batch["pixel_values"].shape[0]), seq_lens)
    flops = counts["model"]
    peak = resolve_peak_flops(peak_device) if device.type == "cuda" else None
    rates = {
        "tokens_per_s": tokens / seconds,
        "samples_per_s": shape.batch / seconds,
        "model_tflops_per_s": flops / seconds / 1e12,
        "model_tflops_no_attention_per_s": counts["no_attention"] / seconds / 1e12,
        "flops_per_step": flops,
        "mfu": flops / seconds / peak if peak else None,
        "mfu_no_attention": counts["no_attention"] / seconds / peak if peak else None,
        "hfu": counts["hardware"] / seconds / peak if peak else None,
        "peak_flops": peak,
        "peak_device": peak_device,
    }
    return {
        "figure": "P5",
        "title": "Throughput and MFU of a DCI training step",
        "clock": times["clock"],
        "times_s": {"dci": times},
        "rates": rates,
        "goal": {"mfu": f">= {P5_GOAL} on an H100 (bf16, seq 2048, ~1B LLM)"},
        "goal_met": None if rates["mfu"] is None else rates["mfu"] >= P5_GOAL,
        "ratios": {},
    }
