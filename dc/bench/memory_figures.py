"""CPU-measurable memory and padding figures: P8 (loss peak per token·vocab element), P9 (activation bytes a
decoder layer keeps per token with each checkpointing choice), P10 (batches that carry any padding).

Memory is counted exactly with `dc.utils.memtrack.LiveTensorBytes` (every storage an ATen op creates, views once),
so these figures need no GPU allocator: they hold on any device up to allocator rounding and kernel scratch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dc.data.grouping import GroupedBatchSampler
from dc.models.llms.linear_ce import linear_cross_entropy
from dc.utils.memtrack import LiveTensorBytes

LLAMA3_VOCAB = 128_256
P8_GOAL = 3.0  # bytes per token·vocab element (HF's dense loss: ≈ 12–13.5)


def loss_peak(variant: str, tokens: int, dim: int, vocab: int, dtype: torch.dtype, supervised: float) -> dict[str, Any]:
    """Peak bytes of one loss forward + backward, from the decoder's last hidden states to their gradients.

    `dense`: HF's `ForCausalLM` loss as it runs in a forward with labels (lm_head on every position in the model
    dtype — the [T, V] logits the output keeps —, upcast to fp32, shift, `cross_entropy`); `chunked`: ours
    (`dc.models.llms.loss`: only the supervised rows, chunked, gradients in the forward).
    """
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, dim, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=g) / dim**0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    labels[torch.rand(tokens, generator=g) >= supervised] = -100
    shifted = F.pad(labels, (0, 1), value=-100)[1:]
    keep = (shifted != -100).nonzero(as_tuple=True)[0]
    with LiveTensorBytes([hidden, weight, labels, shifted, keep]) as live:
        if variant == "dense":
            logits = F.linear(hidden, weight)  # kept alive, as `outputs.logits` is
            loss = F.cross_entropy(logits.float(), shifted, ignore_index=-100)
        else:
            loss = linear_cross_entropy(hidden.index_select(0, keep), weight, shifted[keep], impl="chunked")
        loss.backward()
        peak = live.peak
    return {
        "variant": variant,
        "loss": float(loss.detach()),
        "peak_bytes": peak,
        "bytes_per_token_vocab": peak / (tokens * vocab),
    }


def run_p8(tokens: int = 1024, dim: int = 64, vocab: int = LLAMA3_VOCAB, supervised: float = 0.25) -> dict[str, Any]:
    """P8: the loss's peak bytes per token·vocab element, HF's dense loss vs ours, bf16, 25 % supervised."""
    rows = [loss_peak(v, tokens, dim, vocab, torch.bfloat16, supervised) for v in ("dense", "chunked")]
    ours = rows[1]["bytes_per_token_vocab"]
    return {
        "figure": "P8",
        "title": "Loss peak memory per token·vocab element (bf16, Llama-3 vocabulary, 25 % supervised)",
        "status": "measured",
        "setup": f"T={tokens} tokens, V={vocab}, d={dim}, bf16, {supervised:.0%} of positions supervised; "
        "forward + backward from the last hidden states; tensor bytes (LiveTensorBytes)",
        "columns": ["variant", "loss", "peak MiB", "bytes / (T·V)"],
        "rows": [
            [r["variant"], f"{r['loss']:.5f}", f"{r['peak_bytes'] / 2**20:.0f}", f"{r['bytes_per_token_vocab']:.2f}"]
            for r in rows
        ],
        "values": {r["variant"]: r["bytes_per_token_vocab"] for r in rows},
        "goal": {"chunked": f"<= {P8_GOAL} bytes per token·vocab element"},
        "goal_met": ours <= P8_GOAL,
    }


def layer_saved_bytes(mode: str, tokens: int, width: int, heads: int, kv_heads: int, mlp: int) -> int:
    """Bytes a Llama decoder layer keeps from its forward for its backward, with `mode` checkpointing (bf16)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from dc.models.llms.checkpointing import checkpoint_kwargs

    config = LlamaConfig(
        hidden_size=width,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=mlp,
        num_hidden_layers=1,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(config, layer_idx=0).to(torch.bfloat16).train()
    kwargs = checkpoint_kwargs(mode)
    if kwargs is not None:
        from functools import partial

        from torch.utils.checkpoint import checkpoint

        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(checkpoint, **kwargs)
    x = torch.randn(1, tokens, width, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(tokens)[None]
    emb = tuple(t.to(torch.bfloat16) for t in LlamaRotaryEmbedding(config)(x, pos))
    with LiveTensorBytes([x, *emb, *layer.parameters()]) as live:  # weights: views of them (`t`) are not new memory
        out = layer(x, attention_mask=None, position_embeddings=emb, position_ids=pos)
        kept = live.live - out.untyped_storage().nbytes()
    out.float().sum().backward()
    return kept


def run_p9(
    tokens: int = 256, width: int = 2048, heads: int = 16, kv_heads: int = 16, mlp: int = 5632
) -> dict[str, Any]:
    """P9: activation bytes per token per decoder layer kept for the backward, per checkpointing choice."""
    kept = {
        mode: layer_saved_bytes(mode, tokens, width, heads, kv_heads, mlp) for mode in ("none", "selective", "full")
    }
    input_bytes = 2 * width  # `full` keeps the layer input (bf16), held by the caller: counted here explicitly
    per_token = {m: (v + (input_bytes * tokens if m == "full" else 0)) / tokens for m, v in kept.items()}
    return {
        "figure": "P9",
        "title": "Activation memory a decoder layer keeps per token, by activation-checkpointing choice",
        "status": "measured",
        "setup": f"Llama layer d={width}, {heads} heads ({kv_heads} kv), MLP {mlp}, bf16, {tokens} tokens, SDPA; "
        "bytes alive after the forward (LiveTensorBytes), layer input counted for `full`",
        "columns": [
            "llm.activation_checkpointing",
            "bytes / token / layer",
            "× d (bytes per hidden unit)",
            "vs none",
            "extra FLOPs",
        ],
        "rows": [
            [m, f"{per_token[m]:,.0f}", f"{per_token[m] / width:.1f}", f"{per_token[m] / per_token['none']:.2f}", extra]
            for m, extra in (("none", "0"), ("selective", "elementwise only"), ("full", "+1 forward of the layers"))
        ],
        "values": per_token,
        "goal": {},
        "goal_met": None,
    }


def modelled_llava_lengths(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A LLaVA-665k-like length mix (a model, not the data set): 94 % image samples = 576 visual tokens +
    log-normal text (median ≈ 120 tokens), 6 % text-only conversations (median ≈ 400); all capped at 2048.
    """
    rng = np.random.default_rng(seed)
    has_image = rng.random(n) < 0.94
    text = np.where(has_image, rng.lognormal(np.log(120), 0.8, n), rng.lognormal(np.log(400), 0.9, n))
    lengths = np.minimum(np.where(has_image, 576, 0) + text.astype(np.int64) + 8, 2048)
    return lengths.astype(np.int64), has_image


def _padding(batches: list[list[int]], lengths: np.ndarray) -> tuple[float, float]:
    padded = [(len(b) * lengths[b].max(), int(lengths[b].sum())) for b in batches]
    with_padding = sum(1 for (p, r) in padded if p > r) / len(batches)
    return with_padding, 1 - sum(r for _, r in padded) / sum(p for p, _ in padded)


def run_p10(batch_size: int = 16, max_tokens: int = 16_384) -> dict[str, Any]:
    """P10: fraction of micro-batches carrying any padding (each one pushes padded SDPA off its flash kernel)."""
    lengths, has_image = modelled_llava_lengths()
    rows = []
    for name, kwargs in [
        ("random batches of 16", {"group": False}),
        ("length-grouped batches of 16 (LLaVA's sampler)", {"group": True}),
        (f"token budget {max_tokens} (≤ {batch_size} samples)", {"group": True, "max_tokens": max_tokens}),
    ]:
        sampler = GroupedBatchSampler(lengths, has_image, batch_size, seed=0, **kwargs)
        batches = list(sampler)
        frac, pad = _padding(batches, lengths)
        rows.append([name, len(batches), f"{frac:.1%}", f"{pad:.1%}", "0 %"])
    return {
        "figure": "P10",
        "title": "Micro-batches that carry any padding, and padded tokens (modelled LLaVA-665k length mix)",
        "status": "measured",
        "setup": "20,000 lengths from `modelled_llava_lengths` (a model: 94 % image samples 576 + log-normal text, "
        "6 % text-only); `GroupedBatchSampler` as training uses it. Unpadded attention (llm.attention=unpadded) "
        "packs every micro-batch into one row: 0 padding whatever the sampler.",
        "columns": ["batching", "micro-batches", "with any padding (padded path)", "padded tokens", "unpadded path"],
        "rows": rows,
        "goal": {},
        "goal_met": None,
    }
