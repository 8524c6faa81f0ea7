"""Unpadded (variable-length) causal attention for packed training batches, as a Hugging Face attention function.

A packed batch is one row `[1, T]` holding the batch's sequences back to back (no padding), with `position_ids`
restarting at 0 at every sequence and `cu_seqlens` (`[N + 1]`, int32) marking where each starts. Attention must stay
inside a sequence. This module computes exactly that without ever building a `[T, T]` (block-diagonal) mask:

* `flash_attn`: `flash_attn.flash_attn_varlen_func` (the flash-attn package, CUDA);
* `torch_varlen`: `torch.nn.attention.varlen.varlen_attn` (PyTorch's own flash varlen kernel, CUDA, torch >= 2.9);
* `sdpa_loop`: one causal `scaled_dot_product_attention` per sequence on slices of the packed row (any device;
  each call is unmasked and causal, so SDPA keeps its flash/CPU-flash kernel).

`auto` picks the first available in that order for the device. The function is registered with transformers'
`AttentionInterface` under `VARLEN` (its documented extension point), together with SDPA's mask function, so a
model whose `_attn_implementation` is `VARLEN` behaves exactly like `sdpa` for every ordinary call (generation,
evaluation, padded batches) and takes the varlen path only when the packed-call keyword arguments are present
(`cu_seq_lens_q`, the names HF's own flash-attention path uses).

The packed call passes `attention_mask=PACKED_MASK`, an empty 4-D tensor: HF's mask builder returns a 4-D mask as
it is, so it neither builds a block-diagonal mask from the restarting `position_ids` nor syncs with the device to
detect them.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Sequence
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F

from dc.utils.errors import ConfigError

VARLEN = "dc_varlen"
BACKENDS = ("auto", "flash_attn", "torch_varlen", "sdpa_loop")


def packed_mask(device: torch.device | str) -> torch.Tensor:
    """The placeholder 4-D attention mask of a packed call (empty: nothing is masked by it)."""
    return torch.empty(1, 1, 0, 0, dtype=torch.bool, device=device)


@cache
def _torch_varlen() -> Any:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def available_backends(device: torch.device) -> list[str]:
    """The concrete backends usable on `device`, fastest first."""
    return list(_backends_for(device.type))


@cache
def _backends_for(device_type: str) -> tuple[str, ...]:
    out = []
    if device_type == "cuda":
        if importlib.util.find_spec("flash_attn") is not None:
            out.append("flash_attn")
        if _torch_varlen() is not None:
            out.append("torch_varlen")
    out.append("sdpa_loop")
    return tuple(out)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> str:
    """The concrete backend for `llm.varlen_backend` on `device` computing in `dtype`.

    "auto": the first of `available_backends`; the flash kernels take fp16/bf16 only, so fp32 gets "sdpa_loop".
    """
    if backend not in BACKENDS:
        raise ConfigError(f"llm.varlen_backend={backend!r}: expected one of {BACKENDS}")
    usable = available_backends(device)
    if dtype not in (torch.float16, torch.bfloat16):
        usable = ["sdpa_loop"]
    if backend == "auto":
        return usable[0]
    if backend not in usable:
        raise ConfigError(
            f"llm.varlen_backend={backend!r} is not usable on {device.type} in {dtype}; usable here: {usable}"
        )
    return backend


def register_varlen_attention() -> None:
    """Register `VARLEN` with transformers' attention and mask interfaces (idempotent)."""
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, sdpa_mask)


class HostBounds:
    """Packed sequence bounds on the host (0, len_0, len_0 + len_1, ...), in an opaque holder.

    Handed to the attention through the decoder layers' keyword arguments. A compiled layer guards on what it
    inspects: a tuple would be inspected (its length guarded, a recompile per batch composition) and a host tensor
    would be a graph input; this object is only passed through to `_sdpa_loop`, which runs outside the graph.
    """

    __slots__ = ("bounds",)

    def __init__(self, bounds: Sequence[int]) -> None:
        self.bounds = tuple(int(b) for b in bounds)


@torch.compiler.disable
def _sdpa_loop(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bounds: Sequence[int] | HostBounds,
    scale: float | None,
    dropout: float,
) -> torch.Tensor:
    """q/k/v [1, H, T, D] (k/v may have fewer heads) → [1, H, T, D], causal within each [bounds[i], bounds[i+1]).

    Never traced by `torch.compile` (`llm.compile`): a compiled layer would specialise on the sequence bounds and
    recompile for every new batch composition until Dynamo's recompile limit sends it back to eager. The layer
    compiles around this call (a graph break) and the bounds reach it in a `HostBounds`, which Dynamo passes
    through without guarding on it; the loop of SDPA kernels runs as it is.
    """
    if isinstance(bounds, HostBounds):
        bounds = bounds.bounds
    gqa = k.shape[1] != q.shape[1]
    outs = [
        F.scaled_dot_product_attention(
            q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa
        )
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outs, dim=2)  # always a fresh contiguous tensor: one layout for the compiled code after it


@cache
def _parameters(fn: Any) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)


def _torch_varlen_call(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int, scale: float | None
) -> torch.Tensor:
    """`varlen_attn` on [T, H, D] tensors, adapting to its signature (it changed between torch 2.9 and 2.12)."""
    fn = _torch_varlen()
    params = _parameters(fn)
    kwargs: dict[str, Any] = {}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)  # causal
    else:
        kwargs["is_causal"] = True
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            reps = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(reps, dim=1), v.repeat_interleave(reps, dim=1)
    if "scale" in params:
        kwargs["scale"] = scale
    elif scale is not None:
        q = q * (scale * q.shape[-1] ** 0.5)  # the kernel's default scale is 1/sqrt(D)
    return fn(q, k, v, cu, cu, max_len, max_len, **kwargs)


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    backend: str,
    seq_bounds: Sequence[int] | HostBounds | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Causal attention within each packed sequence.

    Args:
        query: [1, H, T, D]; key, value: [1, H_kv, T, D] (H a multiple of H_kv).
        cu_seqlens: [N + 1] int32 sequence starts (on the tensors' device).
        max_seqlen: the longest sequence (a Python int: no device sync).
        backend: a concrete backend (see `resolve_backend`).
        seq_bounds: `cu_seqlens` on the host, as ints or a `HostBounds` (needed by "sdpa_loop").
        scale: softmax scale (None: 1/sqrt(D)).
        dropout: attention dropout (only "sdpa_loop" supports it).

    Returns:
        [1, T, H, D] (the layout HF attention functions return).
    """
    if backend == "sdpa_loop":
        if seq_bounds is None:
            raise ValueError("varlen backend 'sdpa_loop' needs the host-side sequence bounds (seq_bounds)")
        return _sdpa_loop(query, key, value, seq_bounds, scale, dropout).transpose(1, 2)
    if dropout:
        raise ValueError(f"attention dropout {dropout} is not supported by varlen backend {backend!r}; use 'sdpa_loop'")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, D]
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        out = flash_attn_varlen_func(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale=scale, causal=True
        )
    elif backend == "torch_varlen":
        out = _torch_varlen_call(q, k, v, cu_seqlens, max_seqlen, scale)
    else:
        raise ValueError(f"varlen backend {backend!r}: expected one of {BACKENDS[1:]}")
    return out.unsqueeze(0)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """HF attention-function signature: varlen for packed calls (`cu_seq_lens_q` given), SDPA otherwise."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        mask = None if attention_mask is not None and attention_mask.numel() == 0 else attention_mask
        return sdpa_attention_forward(module, query, key, value, mask, dropout, scaling, is_causal, **kwargs)
    if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        raise ValueError(f"{type(module).__name__}: packed attention supports neither soft-capping nor sliding windows")
    out = varlen_attention(
        query,
        key,
        value,
        cu,
        int(kwargs["max_length_q"]),
        backend=kwargs.get("varlen_backend", "sdpa_loop"),
        seq_bounds=kwargs.get("seq_bounds"),
        scale=scaling,
        dropout=dropout,
    )
    return out, None
