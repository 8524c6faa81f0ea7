"""Encoder peak memory of the DCI feature path: our running-sum encoder vs a stock `output_hidden_states=True`.

Real CLIP-L/336 shape (24 blocks, 577 tokens, width 1024, 16 heads, MLP 4096), random weights, no download.
Each variant runs in its own fresh subprocess (so neither inherits the other's heap) and reports two peaks,
both measured from just before the forward (weights and the input batch already allocated, so excluded):

* `tensor peak`: the most bytes held at once by tensor storages created during the forward, tracked exactly
  by a `TorchDispatchMode` that sees every ATen op output and a finalizer per tensor (storages shared by views
  are counted once; kernel-internal scratch buffers that never become tensors are not seen);
* `carried`: the most tensor bytes alive at a block boundary (right after a block returns, its scratch
  freed): the hidden states kept from block to block, which is what the running sums change;
* `RSS peak`: the process's resident-set high-water mark (`VmHWM`, reset through `/proc/self/clear_refs`)
  minus the resident set before the forward: everything, allocator and kernel scratch included. glibc is told
  to mmap every allocation over 64 KiB (`MALLOC_MMAP_THRESHOLD_`) so freed tensors leave the RSS at once.

Variants (both end with the DCI feature tensor [B, 576, 3·1024] the projector consumes):

* `stock`: HF `CLIPVisionModel` (24 blocks) called with `output_hidden_states=True`, then the reference fusion
  (`fuse_hidden_states`: select, stack-and-mean each group, drop CLS, channel concat);
* `ours`: `HFVisionEncoder` built for the DCI taps (23 blocks, running fp32 group sums), then `fuse`;
* `ours_mb4`: the same with `micro_batch=4` (4 images through the blocks at a time, same features);
* `stock_mb4`: the stock path run on 4 images at a time, each chunk fused and written into a preallocated
  [B, 576, 3072] output: micro-batching without the running sums, to separate the two effects.

Usage: `python experiments/encoder_memory/measure.py [--batch 16] [--threads 2]` (4 CLIP-L forwards of 16 images:
15-20 minutes on a busy 2-core CPU; `--batch 2` for a quick look).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MiB = 2**20
VARIANTS = ["stock", "stock_mb4", "ours", "ours_mb4"]


class LiveTensorBytes(TorchDispatchMode):
    """Bytes held by the storages of tensors produced by ATen ops while active (and their running peak)."""

    def __init__(self, external: list[torch.Tensor]) -> None:
        super().__init__()
        self.external = {t.untyped_storage().data_ptr() for t in external}  # weights, inputs: never counted
        self.storages: dict[int, list[int]] = {}  # data_ptr -> [live tensor objects, nbytes]
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or key in self.external:
            return
        entry = self.storages.get(key)
        if entry is None:
            entry = self.storages[key] = [0, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            del self.storages[key]
            self.live -= entry[1]

    def reset_peak(self) -> None:
        self.peak = self.live


def _status(field: str) -> int:
    """A /proc/self/status field in bytes."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(variant: str, batch: int) -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from dc.models.connectors import DenseChannelIntegration
    from dc.models.encoders.base import EncoderLayout
    from dc.models.encoders.hf_vision import HFVisionEncoder

    layout = EncoderLayout(
        "clip_l336", num_layers=24, hidden_size=1024, image_size=336, patch_size=14, num_prefix_tokens=1
    )
    connector = DenseChannelIntegration(layout, 8, groups=[[0, 11], [12, 23]])  # projector unused here
    tower = dict(intermediate_size=4096, num_attention_heads=16)
    torch.manual_seed(0)
    if variant.startswith("stock"):
        config = CLIPVisionConfig(hidden_size=1024, num_hidden_layers=24, image_size=336, patch_size=14, **tower)
        config._attn_implementation = "sdpa"
        model = CLIPVisionModel(config).eval().requires_grad_(False)
        blocks = len(model.encoder.layers)
    else:
        micro_batch = 4 if variant == "ours_mb4" else None
        model = HFVisionEncoder(layout, connector.taps, family="clip", config=tower, micro_batch=micro_batch)
        blocks = len(model.model.encoder.layers)
    pixels = torch.randn(batch, 3, 336, 336)
    external = [*model.parameters(), *model.buffers(), pixels]
    # Bytes alive right after each block returns (its scratch freed): what is carried from block to block.
    carried: list[int] = []
    layers = model.encoder.layers if variant.startswith("stock") else model.model.encoder.layers
    for layer in layers:
        layer.register_forward_hook(lambda *_: carried.append(tracker.live))

    gc.collect()
    rss0 = _status("VmRSS")
    _reset_hwm()
    t0 = time.perf_counter()
    with torch.no_grad(), LiveTensorBytes(external) as tracker:
        if variant == "stock":
            hidden_states = model(pixels, output_hidden_states=True).hidden_states
            after_encoder = {
                "tensor_peak": tracker.peak,
                "rss_peak": _status("VmHWM") - rss0,
                "states_kept": len(hidden_states),
            }
            fused = connector.fuse_hidden_states(hidden_states)
        elif variant == "stock_mb4":
            fused = torch.empty(batch, 576, 3 * 1024)
            for i in range(0, batch, 4):
                hidden_states = model(pixels[i : i + 4], output_hidden_states=True).hidden_states
                fused[i : i + 4] = connector.fuse_hidden_states(hidden_states)
                del hidden_states
            after_encoder = None
        else:
            fused = connector.fuse(model(pixels))
            after_encoder = None
        seconds = time.perf_counter() - t0
        result = {
            "variant": variant,
            "blocks_run": blocks,
            "fused_shape": list(fused.shape),
            "tensor_peak": tracker.peak,
            "rss_peak": _status("VmHWM") - rss0,
            "live_at_end": tracker.live,
            "carried_max": max(carried),
            "after_encoder": after_encoder,
            "seconds": seconds,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.batch)))
        return

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--child", variant, "--batch", str(args.batch), "--threads", str(args.threads)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(results[variant]), file=sys.stderr)

    state = args.batch * 577 * 1024 * 4
    s = results["stock"]
    enc = s["after_encoder"]
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, "
        f"{args.threads} threads; batch {args.batch}, fp32; one hidden state = {state / MiB:.1f} MiB"
    )
    print()
    print(
        "| DCI feature path | blocks run | carried (MiB) | tensor peak (MiB) | RSS peak (MiB) "
        "| carried / stock | tensor / stock | RSS / stock | time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")

    def row(name: str, r: dict, seconds: str) -> None:
        carried = r.get("carried_max", s["carried_max"])
        print(
            f"| {name} | {r.get('blocks_run', s['blocks_run'])} | {carried / MiB:.0f} | "
            f"{r['tensor_peak'] / MiB:.0f} | {r['rss_peak'] / MiB:.0f} | {carried / s['carried_max']:.3f} | "
            f"{r['tensor_peak'] / s['tensor_peak']:.3f} | {r['rss_peak'] / s['rss_peak']:.3f} | {seconds} |"
        )

    row(f"stock, encoder only (`output_hidden_states=True`, {enc['states_kept']} states)", enc, "")
    row("stock + reference fusion (stack/mean/cat) = baseline", s, f"{s['seconds']:.1f}")
    row(
        "stock, 4 images at a time (micro-batching only)",
        results["stock_mb4"],
        f"{results['stock_mb4']['seconds']:.1f}",
    )
    row("ours: running sums + fuse", results["ours"], f"{results['ours']['seconds']:.1f}")
    row("ours + `micro_batch=4`", results["ours_mb4"], f"{results['ours_mb4']['seconds']:.1f}")


if __name__ == "__main__":
    main()
