"""Where the prefill time goes at the 7B shape, full DCI vs Efficient DC (one GPU, bf16): encoder, connector,
LLM forward, timed separately with CUDA events after warm-up; writes JSON."""

from __future__ import annotations

import json
import sys
import time

import torch

from dc.bench.build import build_vlm, make_batch
from dc.bench.shapes import LLM_7B, LLM_TINY, VIT_CLIP_L, VIT_TINY


def timed(fn, reps: int, device) -> float:
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / reps


def measure_kind(kind: str, vit, llm, dtype: str, device: torch.device) -> dict:
    """Build one side and time its parts (each lambda binds this function's locals)."""
    torch.manual_seed(0)
    with torch.device(device):
        vlm = build_vlm(kind, vit, llm, dtype).eval()
    batch = make_batch(vlm, 1, 64, device)
    px, ids, mask, visual = batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["visual"]
    with torch.no_grad():
        feats = vlm.encoder(px.to(vlm.encoder.dtype))
        embeds = vlm.embed_inputs(ids, px, visual)
        return {
            "seq": int(ids.shape[1]),
            "encoder_ms": timed(lambda: vlm.encoder(px.to(vlm.encoder.dtype)), 10, device),
            "connector_ms": timed(lambda: vlm.connector(feats), 10, device),
            "embed_inputs_ms": timed(lambda: vlm.embed_inputs(ids, px, visual), 10, device),
            "llm_forward_ms": timed(
                lambda: vlm.llm.model(inputs_embeds=embeds, attention_mask=mask, use_cache=True), 10, device
            ),
            "llm_forward_no_cache_ms": timed(
                lambda: vlm.llm.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False), 10, device
            ),
        }


def main(out: str, tiny: bool) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    vit, llm = (VIT_TINY, LLM_TINY) if tiny else (VIT_CLIP_L, LLM_7B)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    result: dict = {"device": str(device)}
    for kind in ("dci", "dci_efficient", "dci"):
        row = measure_kind(kind, vit, llm, dtype, device)
        result[kind + ("_again" if kind in result else "")] = row
        print(kind, row, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with open(out, "w") as f:
            f.write(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], "--tiny" in sys.argv)
