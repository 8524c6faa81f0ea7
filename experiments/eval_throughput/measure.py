"""Evaluation throughput of a 7B-shaped random VLM on one GPU: generated tokens/s, batch size, peak memory.

The model is composed from `configs/` like every benchmark model (`dc.bench.build`: CLIP-L/336-shaped tower, DCI,
Vicuna-7B-shaped Llama, random weights) and built directly on the device in bf16. Each row generates `--new-tokens`
tokens for a batch of prompts (one image + ~60 text tokens each) with the KV cache, greedy, every token forced
(`min_new_tokens`), exactly the path `eval.py` uses (`dc.eval.generate.generate_texts`).

    python experiments/eval_throughput/measure.py --out results.json            # GPU, 7B shape
    python experiments/eval_throughput/measure.py --tiny --out /tmp/t.json      # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from dc.bench.build import build_vlm
from dc.bench.shapes import LLM_7B, LLM_TINY, VIT_CLIP_L, VIT_TINY
from dc.eval.generate import generate_texts, prompt_sample
from dc.models.visual import VisualMeta


def measure(tiny: bool, batches: list[int], new_tokens: int, out: Path) -> dict:
    cuda = torch.cuda.is_available() and not tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = "bfloat16" if cuda else "float32"
    vit, llm = (VIT_TINY, LLM_TINY) if tiny else (VIT_CLIP_L, LLM_7B)
    start = time.perf_counter()
    with torch.device(device):
        vlm = build_vlm("dci", vit, llm, dtype).eval()
    build_s = time.perf_counter() - start
    size = vlm.encoder.layout.image_size
    meta = VisualMeta(views=1, tokens=vlm.num_visual_tokens)
    gen = torch.Generator().manual_seed(0)
    text = "<image>\n" + " ".join(["What colour is the shape in the top left corner of the picture?"] * 5)
    result: dict = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dtype": dtype,
        "shape": {"vit": str(vit), "llm": str(llm), "visual_tokens": vlm.num_visual_tokens},
        "new_tokens": new_tokens,
        "build_s": build_s,
        "rows": [],
    }
    for batch in batches:
        samples = [
            prompt_sample(vlm, text, [(torch.randn(1, 3, size, size, generator=gen), meta)]) for _ in range(batch)
        ]
        generate_texts(vlm, samples[:1], batch_size=1, max_new_tokens=2, min_new_tokens=2)  # warm-up
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        generate_texts(vlm, samples, batch_size=batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        row = {
            "batch": batch,
            "prompt_tokens": len(samples[0]["input_ids"]),
            "seconds": seconds,
            "generated_tokens_per_s": batch * new_tokens / seconds,
            "questions_per_s": batch / seconds,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        }
        result["rows"].append(row)
        out.write_text(json.dumps(result, indent=2))  # after every row: a timeout keeps what finished
        print(json.dumps(row), flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (smoke run)")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("eval_throughput.json"))
    args = p.parse_args()
    measure(args.tiny, [int(b) for b in args.batches.split(",")], args.new_tokens, args.out)


if __name__ == "__main__":
    main()
