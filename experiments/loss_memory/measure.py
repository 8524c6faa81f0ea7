"""Peak memory of the causal-LM loss per token x vocabulary element: HF's dense loss vs ours (chunked).

The loss alone, from the decoder's last hidden states [1, T, d] (T tokens, 25 % supervised at random positions)
to the gradients of the hidden states and the lm_head weight [V, d], at Llama-3's V = 128,256 with a small d so
it fits a few GB of RAM. Each variant runs forward + backward in its own fresh subprocess and reports:

* `tensor peak`: the most bytes held at once by tensor storages created from just before the forward until the
  end of the backward, tracked exactly by a `TorchDispatchMode` that sees every ATen op's outputs and a
  finalizer per tensor (views share a storage and count once; the gradients produced are included; kernel
  scratch that never becomes a tensor is not seen);
* `RSS peak`: the process's resident-set high-water mark over the same span minus the RSS before it
  (`VmHWM`, reset through `/proc/self/clear_refs`; glibc mmaps every allocation over 64 KiB so frees show).

Both are divided by T x V (every token, supervised or not: the size of HF's logits) to give bytes per element.

Variants:
* `dense`: today's loss: `lm_head(hidden)` for every position, then HF's `ForCausalLMLoss` (upcast to fp32,
  shift, `cross_entropy`), exactly as `LlamaForCausalLM(..., labels=...)` does it;
* `chunked_all`: `linear_cross_entropy` (chunked, default chunk) over every position, ignored rows masked:
  chunking alone;
* `chunked`: `shifted_lm_loss` (what `causal_lm_loss` runs after the decoder): only the supervised rows reach
  the chunked lm_head + cross-entropy (default chunk: 1024 rows at this vocabulary);
* `chunked_c128`: the same with 128-row chunks.

Usage: `python experiments/loss_memory/measure.py [--tokens 2048] [--dim 64] [--dtype bfloat16]`
(a few minutes on 2 CPU cores; the dense variant needs ≈ 4 GB of RAM at the defaults).
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
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers.loss.loss_utils import ForCausalLMLoss

from dc.models.llms.loss import LMHead, linear_cross_entropy, shifted_lm_loss

MiB = 2**20
VOCAB = 128_256
VARIANTS = ["dense", "chunked_all", "chunked", "chunked_c128"]


class LiveTensorBytes(TorchDispatchMode):
    """Bytes held by the storages of tensors that ATen ops return while active, and their running peak."""

    def __init__(self, external: list[torch.Tensor]) -> None:
        super().__init__()
        self.external = {t.untyped_storage().data_ptr() for t in external}  # inputs and weights: not counted
        self.storages: dict[int, list[int]] = {}  # data_ptr -> [live tensors, nbytes]
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


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def loss_peak_bytes(variant: str, tokens: int, dim: int, dtype: torch.dtype, supervised: float = 0.25) -> dict:
    """Peak bytes (tensors and RSS) of one forward + backward of the loss `variant`; see the module docstring."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, tokens, dim, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(VOCAB, dim, generator=g) / dim**0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, VOCAB, (1, tokens), generator=g)
    labels[torch.rand(1, tokens, generator=g) >= supervised] = -100
    shifted = F.pad(labels, (0, 1), value=-100)[..., 1:]
    gc.collect()
    rss0 = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM
    t0 = time.perf_counter()
    with LiveTensorBytes([hidden, weight, labels, shifted]) as tracker:
        if variant == "dense":
            loss = ForCausalLMLoss(F.linear(hidden, weight), labels, VOCAB)
        elif variant == "chunked_all":
            loss = linear_cross_entropy(hidden, weight, shifted, impl="chunked")
        else:
            chunk = 128 if variant == "chunked_c128" else None
            loss = shifted_lm_loss(hidden, labels, LMHead(weight, None), impl="chunked", chunk_size=chunk)
        loss.backward()
        seconds = time.perf_counter() - t0
        result = {
            "variant": variant,
            "loss": loss.item(),
            "supervised_rows": int((shifted != -100).sum()),
            "tensor_peak": tracker.peak,
            "rss_peak": _status("VmHWM") - rss0,
            "seconds": seconds,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(loss_peak_bytes(args.child, args.tokens, args.dim, getattr(torch, args.dtype))))
        return

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    results = {}
    for variant in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--tokens",
            str(args.tokens),
            "--dim",
            str(args.dim),
            "--dtype",
            args.dtype,
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(results[variant]), file=sys.stderr)

    elements = args.tokens * VOCAB
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads; "
        f"T={args.tokens} tokens, V={VOCAB}, d={args.dim}, {args.dtype}, "
        f"{results['dense']['supervised_rows']} supervised; T x V = {elements / 1e6:.0f} M elements"
    )
    print()
    print("| variant | loss | tensor peak (MiB) | bytes / (T·V) | RSS peak (MiB) | RSS bytes / (T·V) | time (s) |")
    print("|---|---|---|---|---|---|---|")
    for variant, r in results.items():
        print(
            f"| {variant} | {r['loss']:.5f} | {r['tensor_peak'] / MiB:.0f} | {r['tensor_peak'] / elements:.2f} | "
            f"{r['rss_peak'] / MiB:.0f} | {r['rss_peak'] / elements:.2f} | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
