"""P3, Efficient Dense Connector: prefill latency and decode tokens/s with 2× bilinear-downsampled DCI tokens.

Prefill = encoder + connector + one LLM pass over the prompt that fills the KV cache. Decode = `new_tokens`
greedy single-token steps on that cache. Both sides share the LLM weights; the efficient side's prompt
is shorter by the dropped visual tokens (576 → 144 on a 24×24 grid), with the same text.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from dc.bench.build import build_vlm, make_batch, share_llm
from dc.bench.shapes import FigureShape
from dc.bench.timing import profile_top, stats
from dc.models.vlm import VLM
from dc.training.throughput import flops_spec

P3_GOAL = 0.9  # measured prefill speed-up / its FLOP bound, at 7B on GPU (the bound is 2.86x there, not the paper's 3x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _now(device: torch.device) -> float:
    """Wall clock on CUDA; this process's CPU time on CPU (robust to a contended box, see `dc.bench.timing`)."""
    _sync(device)
    return time.perf_counter() if device.type == "cuda" else time.process_time()


@torch.no_grad()
def prefill_decode(
    vlm: VLM, batch: dict[str, torch.Tensor], new_tokens: int, device: torch.device
) -> tuple[float, float]:
    """(prefill seconds, decode seconds for `new_tokens` tokens), CPU time on CPU."""
    start = _now(device)
    embeds = vlm.embed_inputs(batch["input_ids"], batch["pixel_values"], batch.get("visual"))
    out = vlm.llm.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=True)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    mid = _now(device)
    past = out.past_key_values
    for _ in range(new_tokens):
        out = vlm.llm.model(input_ids=token, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
    return mid - start, _now(device) - mid


def prefill_flop_bound(shape: FigureShape, dtype: str = "bfloat16") -> dict[str, Any]:
    """The prefill speed-up FLOPs allow: forward FLOPs (encoder, connector, LLM with attention) of dci / dci_efficient.

    Both models are built on the meta device (no memory); the prompt is one image + the shape's text tokens.
    """
    text = shape.seq - shape.vit.grid_tokens
    flops, seqs = {}, {}
    for kind in ("dci", "dci_efficient"):
        with torch.device("meta"):
            vlm = build_vlm(kind, shape.vit, shape.llm, dtype)
        seq = vlm.num_visual_tokens + text
        seqs[kind] = seq
        flops[kind] = flops_spec(vlm).forward_flops(seq * shape.batch, shape.batch, [seq] * shape.batch)
    return {"flops": flops, "seq": seqs, "bound": flops["dci"] / flops["dci_efficient"]}


def _paired(a: list[float], b: list[float]) -> dict[str, Any]:
    paired = [x / y for x, y in zip(a, b, strict=True)]
    return {
        "median": statistics.median(paired),
        "of_medians": statistics.median(a) / statistics.median(b),
        "min": min(a) / min(b),
        "paired": paired,
    }


def run_p3(shape: FigureShape, device: torch.device, dtype: str, warmup: int, repeats: int) -> dict[str, Any]:
    """P3: dci (full tokens) vs dci_efficient, interleaved; ratios are full / efficient (speed-ups)."""
    text = shape.seq - shape.vit.grid_tokens
    sides = {kind: build_vlm(kind, shape.vit, shape.llm, dtype) for kind in ("dci", "dci_efficient")}
    share_llm(list(sides.values()))
    sides = {kind: vlm.to(device).eval() for kind, vlm in sides.items()}
    batches = {kind: make_batch(vlm, shape.batch, text, device) for kind, vlm in sides.items()}
    for _ in range(warmup):
        for kind, vlm in sides.items():
            prefill_decode(vlm, batches[kind], shape.new_tokens, device)
    prefill: dict[str, list[float]] = {k: [] for k in sides}
    decode: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(repeats):
        for kind in names[r % 2 :] + names[: r % 2]:
            p, d = prefill_decode(sides[kind], batches[kind], shape.new_tokens, device)
            prefill[kind].append(p)
            decode[kind].append(shape.new_tokens * shape.batch / d)
    pre = {k: stats(v) for k, v in prefill.items()}
    tps = {k: stats(v) for k, v in decode.items()}
    ratios = {
        "prefill_speedup": _paired(prefill["dci"], prefill["dci_efficient"]),
        "decode_tokens_per_s": _paired(decode["dci_efficient"], decode["dci"]),
    }
    bound = prefill_flop_bound(shape, dtype)
    efficiency = ratios["prefill_speedup"]["median"] / bound["bound"]
    result: dict[str, Any] = {
        "figure": "P3",
        "title": "Efficient DC: prefill latency and decode tokens/s, downsampled vs full DCI tokens",
        "baseline": "dci",
        "clock": "wall" if device.type == "cuda" else "cpu",
        "times_s": {f"prefill/{k}": v for k, v in pre.items()},
        "tokens_per_s": {f"decode/{k}": v for k, v in tps.items()},
        "sides": {
            k: {"visual_tokens": v.num_visual_tokens, "seq": int(batches[k]["input_ids"].shape[1])}
            for k, v in sides.items()
        },
        "new_tokens": shape.new_tokens,
        "ratios": ratios,
        "flop_bound": bound,
        "bound_efficiency": efficiency,
        "goal": {
            "prefill_speedup": f"{P3_GOAL:.0%} of the FLOP bound ({bound['bound']:.2f}x at this shape) at 7B on GPU "
            "(CPU shape: reported only)"
        },
        "goal_met": None,
        "profiles": {},
    }
    if device.type == "cuda":
        result["goal_met"] = efficiency >= P3_GOAL
        if not result["goal_met"]:
            result["profiles"]["dci_efficient"] = profile_top(
                lambda: prefill_decode(sides["dci_efficient"], batches["dci_efficient"], 0, device)
            )
    return result
