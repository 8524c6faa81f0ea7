"""`python -m dc.bench --mode gpu --part 1|2`: the GPU benchmark, in two parts of at most ~5 minutes each.

Part 1: `calibration` (achieved dense bf16 GEMM TFLOP/s) and `mfu_1b`: a ~1B LLM (TinyLlama shape) + a
CLIP-L/336-shaped frozen encoder + DCI, stage 2 (connector + LLM train), bf16, in a training-like setup — FSDP2
on one GPU (`shard_vlm`, fp32 master weights and fp32 gradient reduction, frozen encoder stored in bf16),
token-budgeted micro-batches of a modelled LLaVA length mix capped at 2048, unpadded (packed) attention,
activation checkpointing, the chunked/Liger loss, AdamW — in a few variants (checkpointing choice, padded
attention, compiled layers). MFU in torchtitan's convention (attention included) against the H100 SXM peak and
against the calibrated GEMM rate, MFU without attention, and HFU.

Part 2: `loss_variants` (dense / chunked / Liger: time and peak bytes per token·vocab element at d=4096,
16 × 2048 tokens, 25 % supervised, V = 32,000 and 128,256), `attention_variants` (padded SDPA with a mask vs
unpadded varlen backends on the ~1B decoder, time, memory and agreement), `p3_7b` (Efficient DC prefill
speed-up at the 7B shape, against its FLOP bound) and `memory_7b` (does 7B / Llama-3-8B stage 2 fit at the
configured 16 × 2048 per GPU on 8 × 80 GB: measured per-layer activations and loss peak + sharded state).

Every section is timed, guarded (a failure is recorded and the next section runs) and the JSON is rewritten after
each one, so a timeout keeps what finished. `--tiny` runs the same code at toy shapes (CPU is fine): a logic check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import json
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dc.bench.build import model_config
from dc.bench.memory_figures import modelled_llava_lengths
from dc.bench.shapes import LLM_1B, LLM_7B, LLM_TINY, VIT_CLIP_L, VIT_TINY, FigureShape, LlmShape
from dc.constants import IMAGE_TOKEN_INDEX
from dc.data.grouping import budget_cuts
from dc.models.builder import build_vlm as build_from_config
from dc.models.llms.layout import token_layout
from dc.models.visual import VisualMeta
from dc.training.fsdp2 import shard_vlm
from dc.training.optim import adamw_impl_kwargs
from dc.training.precision import store_frozen
from dc.training.stages import apply_freezing
from dc.training.throughput import PEAK_BF16_FLOPS, flops_spec
from dc.utils.memtrack import LiveTensorBytes

MFU_GOAL = 0.45  # torchtitan convention, ~1B shape, training-like setup, H100
PROFILED = "packed_none_compiled_fused_enc"  # the variant `profile_1b` breaks down


# --- plumbing -----------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    """Release the previous section's memory and compiled code (each variant compiles afresh: Dynamo's per-code
    cache is shared by every transformers layer class, and earlier variants' entries would count against it).
    """
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


@contextlib.contextmanager
def peak_bytes(device: torch.device, exclude: tuple[torch.Tensor, ...] = ()) -> Any:
    """Yields a dict whose "peak" is set on exit: bytes allocated at peak above the start (CUDA) or tracked (CPU)."""
    out: dict[str, int] = {}
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield out
        _sync(device)
        out["peak"] = torch.cuda.max_memory_allocated(device) - start
    else:
        with LiveTensorBytes(exclude) as live:
            yield out
        out["peak"] = live.peak


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median / min seconds of `fn` after `warmup` calls (wall clock, synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"median": float(np.median(times)), "min": float(min(times)), "samples": times}


def _one_rank_mesh(device: torch.device) -> Any:
    """A world-size-1 process group and mesh (FSDP2 on one device), created once per process."""
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        store = Path(tempfile.mkdtemp(prefix="dc_bench_pg_")) / "store"
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", init_method=f"file://{store}", rank=0, world_size=1
        )
    return init_device_mesh(device.type, (1,))


# --- shapes and batches -------------------------------------------------------------------------------------------
def shapes(tiny: bool) -> dict[str, Any]:
    """Shapes, budgets and repeat counts of the GPU sections (`tiny`: toy versions of the same)."""
    if tiny:
        return {
            "vit": VIT_TINY,
            "llm": LLM_TINY,
            "llm_7b": LlmShape(64, 2, 2, 128, vocab_size=512),
            "seq_cap": 64,
            "max_tokens": 256,
            "max_samples": 4,
            "warmup": 1,
            "repeats": 2,
            "loss_tokens": 256,
            "loss_dim": 32,
            "vocabs": (512, 1024),
            "gemm": 256,
            "p3": FigureShape(VIT_TINY, LLM_TINY, seq=24, new_tokens=2),
            "layer_tokens": 128,
            "visual": 16,
        }
    return {
        "vit": VIT_CLIP_L,
        "llm": LLM_1B,
        "llm_7b": LLM_7B,
        "seq_cap": 2048,
        "max_tokens": 16_384,
        "max_samples": 32,
        "warmup": 3,
        "repeats": 8,
        "loss_tokens": 16_384,
        "loss_dim": 4096,
        "vocabs": (32_000, 128_256),
        "gemm": 8192,
        "p3": FigureShape(VIT_CLIP_L, LLM_7B, seq=576 + 64, new_tokens=32),
        "layer_tokens": 16_384,
        "visual": 576,
    }


def budget_batches(cfg: dict[str, Any], n_batches: int, seed: int = 0) -> list[list[int]]:
    """Lengths of `n_batches` token-budgeted micro-batches of the modelled LLaVA mix (image samples only)."""
    lengths, has_image = modelled_llava_lengths(4000, seed)
    scale = cfg["seq_cap"] / 2048
    lengths = np.maximum((lengths[has_image] * scale).astype(np.int64), cfg["visual"] + 8)
    lengths = np.minimum(lengths, cfg["seq_cap"])
    rng = np.random.default_rng(seed)
    order = np.sort(rng.choice(lengths, size=min(len(lengths), 50 * n_batches), replace=False))[::-1]
    cuts = budget_cuts(order, cfg["max_tokens"], cfg["max_samples"])
    picks = rng.choice(len(cuts), size=n_batches, replace=False)
    return [order[cuts[k][0] : cuts[k][1]].tolist() for k in sorted(picks)]


def vlm_batch(vlm: Any, lengths: list[int], device: torch.device, *, packed: bool, seed: int = 0) -> dict[str, Any]:
    """A right-padded training batch, one image per sample (its visual slots after one text token), with layout."""
    g = torch.Generator().manual_seed(seed)
    vocab = vlm.llm.model.get_input_embeddings().num_embeddings
    n_vis, width = vlm.num_visual_tokens, max(lengths)
    ids = torch.randint(3, vocab - 1, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    ids[:, 1 : 1 + n_vis] = IMAGE_TOKEN_INDEX
    labels = ids.masked_fill((ids == IMAGE_TOKEN_INDEX) | (mask == 0), -100)
    size = vlm.encoder.layout.image_size
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "pixel_values": torch.randn(len(lengths), 3, size, size, generator=g),
        "visual": [VisualMeta(views=1, tokens=n_vis)] * len(lengths),
    }
    batch["layout"] = token_layout(mask, labels, packed=packed, input_ids=ids, visual_token_id=IMAGE_TOKEN_INDEX)
    return {
        k: (v.to(device, non_blocking=True) if hasattr(v, "to") and not isinstance(v, list) else v)
        for k, v in batch.items()
    }


def build_training_vlm(
    cfg: dict[str, Any], device: torch.device, *overrides: str, reshard_after_forward: bool = True
) -> tuple[Any, Any]:
    """The ~1B VLM of `mfu_1b` (stage 2), frozen parts in bf16, FSDP2-sharded on one device; returns (vlm, spec).

    `reshard_after_forward`: True is `stage.sharding=FULL_SHARD` (parameters gathered again for the backward),
    False is `SHARD_GRAD_OP` (kept gathered from forward to backward).
    """
    node = model_config("dci", cfg["vit"], cfg["llm"], "float32", *overrides)
    with torch.device(device):
        vlm = build_from_config(node)
    apply_freezing(vlm, ["connector", "llm"])
    vlm.train()
    spec = flops_spec(vlm)
    store_frozen(vlm, torch.bfloat16)
    shard_vlm(
        vlm,
        mesh=_one_rank_mesh(device),
        param_dtype=torch.bfloat16,
        reduce_dtype=torch.float32,
        reshard_after_forward=reshard_after_forward,
    )
    return vlm, spec


# --- part 1 ------------------------------------------------------------------------------------------------------
def calibration(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Achieved dense bf16 GEMM rate (n × n × n), the practical ceiling for MFU."""
    n = cfg["gemm"]
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = timed(lambda: a @ b, device, warmup=5, repeats=20)
    rate = 2 * n**3 / t["median"]
    return {"gemm": f"{n}x{n}x{n} bf16", "tflops": rate / 1e12, "vs_h100_sxm_peak": rate / PEAK_BF16_FLOPS["h100_sxm"]}


def _graphs_compiled() -> int:
    """Graphs Dynamo has compiled in this process so far (a compile inside a timed loop would show here)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@dataclasses.dataclass(frozen=True)
class MfuVariant:
    """One `mfu_1b` configuration: model config overrides plus the optimizer kernel and gradient accumulation.

    `accumulate_samples`: micro-batches are accumulated into optimizer steps of about this many samples (LLaVA's
    stage-2 global batch is 128), a fixed count per step as Lightning's `accumulate_grad_batches`; gradients are
    reduce-scattered once per step (`trainer.strategy.reduce_grads_per=step`). None: one optimizer step per
    micro-batch (the earlier variants). `sharding`: `stage.sharding`, FULL_SHARD or SHARD_GRAD_OP.
    """

    overrides: tuple[str, ...]
    optimizer_impl: str = "foreach"
    accumulate_samples: int | None = None
    sharding: str = "FULL_SHARD"


_PACKED_NONE_COMPILED = ("llm.attention=unpadded", "llm.activation_checkpointing=none", "llm.compile=true")
_ENCODER_COMPILED = ("encoder.model.compile=true",)
MFU_VARIANTS = {
    "packed_selective": MfuVariant(("llm.attention=unpadded", "llm.activation_checkpointing=selective")),
    "packed_none": MfuVariant(("llm.attention=unpadded", "llm.activation_checkpointing=none")),
    "packed_full": MfuVariant(("llm.attention=unpadded", "llm.activation_checkpointing=full")),
    "padded_selective": MfuVariant(("llm.attention=padded", "llm.activation_checkpointing=selective")),
    "packed_selective_compiled": MfuVariant(
        ("llm.attention=unpadded", "llm.activation_checkpointing=selective", "llm.compile=true")
    ),
    "packed_none_compiled": MfuVariant(_PACKED_NONE_COMPILED),
    "packed_none_compiled_fused": MfuVariant(_PACKED_NONE_COMPILED, optimizer_impl="fused"),
    "packed_none_compiled_fused_enc": MfuVariant(_PACKED_NONE_COMPILED + _ENCODER_COMPILED, optimizer_impl="fused"),
    "packed_none_compiled_fused_enc_acc128": MfuVariant(
        _PACKED_NONE_COMPILED + _ENCODER_COMPILED, optimizer_impl="fused", accumulate_samples=128
    ),
    "packed_none_compiled_fused_enc_acc128_sgo": MfuVariant(
        _PACKED_NONE_COMPILED + _ENCODER_COMPILED,
        optimizer_impl="fused",
        accumulate_samples=128,
        sharding="SHARD_GRAD_OP",
    ),
    "packed_selective_compiled_fused_enc_acc128": MfuVariant(
        ("llm.attention=unpadded", "llm.activation_checkpointing=selective", "llm.compile=true", *_ENCODER_COMPILED),
        optimizer_impl="fused",
        accumulate_samples=128,
    ),
}


def _training_setup(
    cfg: dict[str, Any], device: torch.device, variant: MfuVariant
) -> tuple[Any, Any, list[list[dict[str, Any]]], Callable[[list[dict[str, Any]]], None]]:
    """The sharded VLM, its FLOP spec, the optimizer steps (lists of micro-batches) and a `step(micro_batches)`."""
    if variant.sharding not in ("FULL_SHARD", "SHARD_GRAD_OP"):
        raise ValueError(f"MfuVariant.sharding={variant.sharding!r}: expected FULL_SHARD or SHARD_GRAD_OP")
    vlm, spec = build_training_vlm(
        cfg, device, *variant.overrides, reshard_after_forward=variant.sharding == "FULL_SHARD"
    )
    packed = "llm.attention=unpadded" in variant.overrides
    lengths = budget_batches(cfg, 4 if variant.accumulate_samples is None else 16)
    micro = [vlm_batch(vlm, lens, device, packed=packed, seed=k) for k, lens in enumerate(lengths)]
    per_step = 1
    if variant.accumulate_samples is not None:
        mean_samples = float(np.mean([len(lens) for lens in lengths]))
        per_step = max(1, min(len(micro), round(variant.accumulate_samples / mean_samples)))
    steps = [micro[i : i + per_step] for i in range(0, len(micro) - per_step + 1, per_step)]
    params = [p for p in vlm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, **adamw_impl_kwargs(params, variant.optimizer_impl))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step(batches: list[dict[str, Any]]) -> None:
        opt.zero_grad(set_to_none=True)
        for k, batch in enumerate(batches):
            last = k == len(batches) - 1
            vlm.set_requires_gradient_sync(last)  # reduce once per optimizer step (reduce_grads_per=step)
            with autocast:
                loss = vlm(**batch).loss / len(batches)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return vlm, spec, steps, step


def mfu_variant(
    cfg: dict[str, Any], device: torch.device, variant: MfuVariant, calibrated: float | None
) -> dict[str, Any]:
    """Optimizer steps of the ~1B VLM in `variant`; tokens/s, MFU (both conventions), HFU, peak memory."""
    _free(device)
    started = time.perf_counter()
    vlm, spec, steps, step = _training_setup(cfg, device, variant)
    for k in range(max(cfg["warmup"], len(steps))):  # every distinct step once: no (re)compile while timed
        step(steps[k % len(steps)])
    build_s = time.perf_counter() - started
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    flops = {"no_attention": 0.0, "model": 0.0, "hardware": 0.0}
    tokens = samples = micro_batches = 0
    graphs_before = _graphs_compiled()
    repeats = cfg["repeats"] if variant.accumulate_samples is None else max(2, cfg["repeats"] // 2)
    start = time.perf_counter()
    for k in range(repeats):
        batches = steps[k % len(steps)]
        step(batches)
        for batch in batches:
            lens = batch["layout"].seq_lens
            tokens += sum(lens)
            samples += len(lens)
            micro_batches += 1
            for key, value in spec.flops(sum(lens), len(lens), lens).items():
                flops[key] += value
    _sync(device)
    seconds = time.perf_counter() - start
    peak = PEAK_BF16_FLOPS["h100_sxm"]
    return {
        "graphs_compiled_while_timed": _graphs_compiled() - graphs_before,
        "overrides": list(variant.overrides),
        "optimizer_impl": variant.optimizer_impl,
        "sharding": variant.sharding,
        "micro_batches_per_step": micro_batches / repeats,
        "samples_per_step": samples / repeats,
        "steps": repeats,
        "tokens_per_step": tokens / repeats,
        "tokens_per_s": tokens / seconds,
        "step_s": seconds / repeats,
        "model_tflops_per_s": flops["model"] / seconds / 1e12,
        "mfu": flops["model"] / seconds / peak,
        "mfu_no_attention": flops["no_attention"] / seconds / peak,
        "hfu": flops["hardware"] / seconds / peak,
        "mfu_vs_calibrated": flops["model"] / seconds / calibrated if calibrated else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "setup_and_warmup_s": build_s,
        "loss_impl": vlm.llm.loss,
    }


KERNEL_CATEGORIES = (  # first match wins; matched against lower-cased kernel names
    ("attention", ("flash", "fmha", "attention", "attn", "varlen", "sdpa")),
    ("optimizer", ("adam",)),
    ("communication", ("nccl", "all_gather", "reduce_scatter", "allreduce")),
    ("gemm", ("gemm", "cutlass", "nvjet", "xmma", "sm90_", "sm80_", "cublas", "matmul", "mm_", "triton_tem")),
    ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),  # CPU operator names
    ("multi_tensor", ("multi_tensor",)),  # foreach kernels outside the optimizer: FSDP copy-in, clip_grad_norm_
    ("triton", ("triton",)),  # Inductor's fused pointwise/reduction kernels
    ("copy", ("memcpy", "memset", "copy_kernel", "direct_copy", "fill_kernel", "catarray", "cat_kernel")),
)


def kernel_category(name: str) -> str:
    """The `profile_1b` category of a kernel (or CPU op) name: attention, optimizer, gemm, ..., else elementwise."""
    lowered = name.lower()
    for category, keys in KERNEL_CATEGORIES:
        if any(k in lowered for k in keys):
            return category
    return "elementwise"


def device_time(events: Any, *, cuda: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Microseconds per kernel category and per kernel name from profiler events.

    CUDA: the device events' own durations, leaving out user-annotation ranges (FSDP's `FSDP::*`, the optimizer's
    `Optimizer.step#...`, compiled regions), which span kernels counted already. CPU: operator self time.
    """
    from torch.autograd import DeviceType

    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    by_category: dict[str, float] = {}
    top: dict[str, float] = {}
    for event in events:
        if event.device_type != kind or getattr(event, "is_user_annotation", False):
            continue
        us = float(event.time_range.elapsed_us()) if cuda else float(event.self_cpu_time_total)
        category = kernel_category(event.name)
        by_category[category] = by_category.get(category, 0.0) + us
        top[event.name] = top.get(event.name, 0.0) + us
    return by_category, top


def profile_variant(cfg: dict[str, Any], device: torch.device, variant: MfuVariant, steps: int = 2) -> dict[str, Any]:
    """Where a step's time goes: `torch.profiler` over `steps` optimizer steps of `variant` after warm-up.

    Device (kernel) time per category and the busy fraction (kernel time / wall time: the rest is the GPU
    waiting for the host; kernels overlapping on other streams, e.g. NCCL, can push it above 1). On CPU the same
    code adds up CPU operator self time instead: a logic check only.
    """
    from torch.profiler import ProfilerActivity, profile

    _free(device)
    vlm, _, batches, step = _training_setup(cfg, device, variant)
    for k in range(max(cfg["warmup"], len(batches))):  # every distinct step once: no (re)compile while timed
        step(batches[k % len(batches)])
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for k in range(steps):
            step(batches[k % len(batches)])
        _sync(device)
        wall = time.perf_counter() - start
    by_category, top = device_time(prof.events(), cuda=device.type == "cuda")
    busy = sum(by_category.values()) / 1e6
    del vlm
    return {
        "overrides": list(variant.overrides),
        "optimizer_impl": variant.optimizer_impl,
        "steps": steps,
        "wall_ms_per_step": 1000 * wall / steps,
        "timed": "device kernels" if device.type == "cuda" else "cpu operators (self)",
        "busy_fraction": busy / wall,
        "ms_per_step": {k: v / 1000 / steps for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms_per_step": {
            name[:120]: us / 1000 / steps for name, us in sorted(top.items(), key=lambda kv: -kv[1])[:15]
        },
    }


# --- part 2 ------------------------------------------------------------------------------------------------------
def loss_variants(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Loss forward + backward from hidden states: dense (HF) vs chunked vs Liger, time and peak per token·vocab."""
    from dc.models.llms.linear_ce import liger_available, linear_cross_entropy

    tokens, dim = cfg["loss_tokens"], cfg["loss_dim"]
    impls = ["dense", "chunked"] + (["liger"] if device.type == "cuda" and liger_available() else [])
    out: dict[str, Any] = {"tokens": tokens, "dim": dim, "supervised": 0.25, "liger_installed": "liger" in impls}
    for vocab in cfg["vocabs"]:
        _free(device)
        g = torch.Generator(device="cpu").manual_seed(0)
        hidden = torch.randn(tokens, dim, generator=g).to(device, torch.bfloat16).requires_grad_()
        weight = (torch.randn(vocab, dim, generator=g) / dim**0.5).to(device, torch.bfloat16).requires_grad_()
        labels = torch.randint(0, vocab, (tokens,), generator=g)
        labels[torch.rand(tokens, generator=g) >= 0.25] = -100
        keep = (labels != -100).nonzero(as_tuple=True)[0].to(device)
        labels = labels.to(device)
        rows: dict[str, Any] = {}
        for impl in impls:

            def run(
                impl: str = impl,
                hidden: torch.Tensor = hidden,
                weight: torch.Tensor = weight,
                labels: torch.Tensor = labels,
                keep: torch.Tensor = keep,
            ) -> torch.Tensor:
                hidden.grad = weight.grad = None
                if impl == "dense":  # HF: logits for every position (kept, as outputs.logits), fp32 upcast, CE
                    logits = torch.nn.functional.linear(hidden, weight)
                    loss = torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=-100)
                else:
                    loss = linear_cross_entropy(hidden.index_select(0, keep), weight, labels[keep], impl=impl)
                loss.backward()
                return loss.detach()

            try:
                with peak_bytes(device, (hidden, weight, labels, keep)) as mem:
                    loss = run()
                t = timed(run, device, warmup=1, repeats=3)
                rows[impl] = {
                    "loss": float(loss),
                    "ms": 1000 * t["median"],
                    "peak_gib": mem["peak"] / 2**30,
                    "bytes_per_token_vocab": mem["peak"] / (tokens * vocab),
                }
            except torch.OutOfMemoryError as err:
                rows[impl] = {"error": f"OOM: {err}"[:300]}
            _free(device)
        out[f"V={vocab}"] = rows
    return out


def attention_variants(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The ~1B decoder, forward + backward on one token-budgeted micro-batch: padded SDPA (mask) vs unpadded backends."""
    from dc.models.llms.varlen import available_backends

    backends = available_backends(device)
    lens = budget_batches(cfg, 1, seed=3)[0]
    out: dict[str, Any] = {"seq_lens": lens, "tokens": sum(lens), "padded_width": max(lens) * len(lens)}
    reference = None
    for name, overrides in [("padded_sdpa_mask", ("llm.attention=padded",))] + [
        (f"unpadded_{b}", ("llm.attention=unpadded", f"llm.varlen_backend={b}")) for b in backends
    ]:
        _free(device)
        node = model_config("dci", cfg["vit"], cfg["llm"], "bfloat16", *overrides)
        torch.manual_seed(0)
        with torch.device(device):
            llm = build_from_config(node).llm
        llm.train()
        packed = "llm.attention=unpadded" in overrides
        g = torch.Generator().manual_seed(1)
        width = max(lens)
        ids = torch.randint(3, llm.model.config.vocab_size - 1, (len(lens), width), generator=g)
        mask = (torch.arange(width)[None] < torch.tensor(lens)[:, None]).long()
        layout = token_layout(mask, ids.masked_fill(mask == 0, -100), packed=packed).to(device)
        ids, mask = ids.to(device), mask.to(device)

        def run(
            llm: Any = llm, ids: torch.Tensor = ids, mask: torch.Tensor = mask, layout: Any = layout
        ) -> torch.Tensor:
            llm.zero_grad(set_to_none=True)
            loss = llm(inputs_embeds=llm.embed(ids), attention_mask=mask, layout=layout).loss
            loss.backward()
            return loss.detach()

        try:
            with peak_bytes(device) as mem:
                loss = run()
            t = timed(run, device, warmup=1, repeats=cfg["repeats"])
            grad = llm.model.model.layers[0].self_attn.q_proj.weight.grad.float()
            row = {"ms": 1000 * t["median"], "peak_gib": mem["peak"] / 2**30, "loss": float(loss)}
            if reference is None:
                reference = (float(loss), grad)
            else:
                row["loss_rel_diff_vs_padded"] = abs(float(loss) - reference[0]) / abs(reference[0])
                row["grad_rel_diff_vs_padded"] = float((grad - reference[1]).norm() / reference[1].norm())
            out[name] = row
        except Exception as err:  # noqa: BLE001 - a backend that fails on this GPU/torch is a result, not a crash
            out[name] = {"error": f"{type(err).__name__}: {err}"[:400]}
        del llm
        _free(device)
    return out


def p3_7b(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """P3 at the 7B shape: dci vs dci_efficient prefill speed-up, against its FLOP bound."""
    from dc.bench.build import build_vlm, make_batch
    from dc.bench.infer_figures import prefill_decode, prefill_flop_bound

    shape = cfg["p3"]
    text = shape.seq - shape.vit.grid_tokens
    bound = prefill_flop_bound(shape)
    times: dict[str, list[float]] = {}
    for kind in ("dci", "dci_efficient"):
        _free(device)
        torch.manual_seed(0)  # same LLM weights on both sides (built with the same seed)
        with torch.device(device):
            vlm = build_vlm(kind, shape.vit, shape.llm, "bfloat16").eval()
        batch = make_batch(vlm, shape.batch, text, device)
        for _ in range(2):
            prefill_decode(vlm, batch, shape.new_tokens, device)
        times[kind] = [prefill_decode(vlm, batch, shape.new_tokens, device)[0] for _ in range(5)]
        del vlm
    speedup = float(np.median(times["dci"]) / np.median(times["dci_efficient"]))
    return {
        "prefill_ms": {k: 1000 * float(np.median(v)) for k, v in times.items()},
        "prefill_speedup": speedup,
        "flop_bound": bound["bound"],
        "fraction_of_bound": speedup / bound["bound"],
        "goal": ">= 90 % of the FLOP bound",
        "goal_met": speedup / bound["bound"] >= 0.9,
    }


def memory_7b(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Stage-2 memory per GPU at 16 × 2048 tokens on 8 GPUs: measured layer activations and loss peak + states."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from dc.models.llms.checkpointing import checkpoint_kwargs
    from dc.models.llms.linear_ce import linear_cross_entropy

    shape: LlmShape = cfg["llm_7b"]
    tokens = cfg["layer_tokens"]
    config = LlamaConfig(
        hidden_size=shape.hidden_size,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        intermediate_size=shape.mlp,
        num_hidden_layers=1,
    )
    config._attn_implementation = "sdpa"
    kept: dict[str, float] = {}
    for mode in ("none", "selective", "full"):
        _free(device)
        with torch.device(device):
            layer = LlamaDecoderLayer(config, 0).to(torch.bfloat16).train()
            rope = LlamaRotaryEmbedding(config)
        kwargs = checkpoint_kwargs(mode)
        if kwargs is not None:
            from functools import partial

            from torch.utils.checkpoint import checkpoint

            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = partial(checkpoint, **kwargs)
        x = torch.randn(1, tokens, shape.hidden_size, device=device, dtype=torch.bfloat16, requires_grad=True)
        pos = torch.arange(tokens, device=device)[None]
        emb = tuple(t.to(torch.bfloat16) for t in rope(x, pos))
        kept[mode] = _kept_per_token(layer, x, emb, pos, device)
        if mode == "full":
            kept[mode] += 2 * shape.hidden_size  # the layer input, kept by the checkpoint
        del layer, x
    results: dict[str, Any] = {"tokens_per_gpu": tokens, "activation_bytes_per_token_per_layer": kept, "models": {}}
    gib = 2**30
    for name, vocab, layers, params in (("vicuna7b", 32_000, 32, 6.74e9), ("llama3_8b", 128_256, 32, 8.03e9)):
        _free(device)
        hidden = torch.randn(tokens // 4, shape.hidden_size, device=device, dtype=torch.bfloat16, requires_grad=True)
        weight = torch.randn(vocab, shape.hidden_size, device=device, dtype=torch.bfloat16, requires_grad=True)
        labels = torch.randint(0, vocab, (tokens // 4,), device=device)
        with peak_bytes(device, (hidden, weight, labels)) as mem:
            linear_cross_entropy(hidden, weight, labels, impl="chunked").backward()
        loss_gib = mem["peak"] / gib
        del hidden, weight, labels
        states = 16 * params / 8 / gib  # fp32 weights + grads + Adam moments, sharded over 8 GPUs
        encoder = 0.3e9 * 2 / gib  # frozen CLIP-L in bf16, replicated
        gathered = 2 * 2 * (params / layers) / gib  # two bf16 layers gathered at a time (prefetch)
        per_mode = {}
        for mode, b in kept.items():
            # kept activations of every layer + (when checkpointing) the one layer rebuilt in full for its backward
            rebuilt = kept["none"] * tokens / gib if mode != "none" else 0.0
            total = states + encoder + gathered + loss_gib + b * tokens * layers / gib + rebuilt + 2.0  # 2 GiB slack
            per_mode[mode] = {"total_gib": total, "fits_80gb": total < 76}
        results["models"][name] = {"states_gib": states, "loss_peak_gib": loss_gib, "by_checkpointing": per_mode}
    _free(device)
    return results


def _kept_per_token(layer: Any, x: torch.Tensor, emb: tuple, pos: torch.Tensor, device: torch.device) -> float:
    """Bytes per token a layer's forward leaves allocated for its backward (its output excluded)."""
    tokens = x.shape[1]
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        out = layer(x, attention_mask=None, position_embeddings=emb, position_ids=pos)
        _sync(device)
        kept = torch.cuda.memory_allocated(device) - base - out.untyped_storage().nbytes()
    else:
        with LiveTensorBytes([x, *emb, *layer.parameters()]) as live:
            out = layer(x, attention_mask=None, position_embeddings=emb, position_ids=pos)
            kept = live.live - out.untyped_storage().nbytes()
    out.float().sum().backward()
    return kept / tokens


# --- runner ------------------------------------------------------------------------------------------------------
def _meta(part: int, device: torch.device, tiny: bool) -> dict[str, Any]:
    import transformers

    return {
        "part": part,
        "tiny": tiny,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_part(part: int, out_dir: Path, tiny: bool = False, only: list[str] | None = None) -> Path:
    """Run part 1 or 2; `out_dir/gpu_part<part>.json` is rewritten after every section."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = shapes(tiny)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu_part{part}.json"
    result: dict[str, Any] = {"meta": _meta(part, device, tiny), "sections": {}}
    torch.backends.cuda.matmul.allow_tf32 = True

    def record(name: str, fn: Callable[[], Any]) -> Any:
        if only and name not in only and not any(name.startswith(o + "/") for o in only):
            return None
        started = time.perf_counter()
        try:
            value = {"status": "ok", **fn()}
        except Exception as err:  # noqa: BLE001 - keep going: the next section may still work
            value = {
                "status": "failed",
                "error": f"{type(err).__name__}: {err}"[:1000],
                "trace": traceback.format_exc()[-3000:],
            }
        value["seconds"] = time.perf_counter() - started
        result["sections"][name] = value
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        os.replace(tmp, path)
        print(f"[gpu part {part}] {name}: {value['status']} in {value['seconds']:.0f} s", flush=True)
        return value

    if part == 1:
        cal = record("calibration", lambda: calibration(cfg, device))
        calibrated = cal["tflops"] * 1e12 if cal and cal.get("status") == "ok" else None
        for name, variant in MFU_VARIANTS.items():
            record(f"mfu_1b/{name}", lambda v=variant: mfu_variant(cfg, device, v, calibrated))
            _free(device)
        record("profile_1b", lambda: profile_variant(cfg, device, MFU_VARIANTS[PROFILED]))
        _free(device)
        best_name, best = max(
            ((k, v) for k, v in result["sections"].items() if k.startswith("mfu_1b/") and v.get("status") == "ok"),
            key=lambda kv: kv[1]["mfu"],
            default=(None, None),
        )
        result["summary"] = {
            "best_mfu": best["mfu"] if best else None,
            "best_variant": best_name,
            "goal": f"mfu >= {MFU_GOAL} (torchtitan convention, attention included)",
            "goal_met": bool(best and best["mfu"] >= MFU_GOAL),
        }
    else:
        record("loss_variants", lambda: loss_variants(cfg, device))
        record("attention_variants", lambda: attention_variants(cfg, device))
        record("p3_7b", lambda: p3_7b(cfg, device))
        record("memory_7b", lambda: memory_7b(cfg, device))
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if dist.is_initialized():
        dist.destroy_process_group()
    return path
