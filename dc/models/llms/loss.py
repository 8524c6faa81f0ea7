"""Causal-LM loss as HF's `ForCausalLM(..., labels=...).loss`, without ever building the [B, S, V] logits.

HF's loss builds logits [B, S, V] in the model dtype, upcasts them to fp32 and runs `cross_entropy` over every
position: about 14 bytes per token x vocabulary element at peak (measured 14.0; ≈ 55 GiB for a 16 x 2048 batch at Llama-3's
128,256 vocabulary). `causal_lm_loss` instead runs the decoder without its lm_head, shifts the labels as HF does,
keeps only the supervised positions (typically a fraction of the batch), so the lm_head runs on those rows alone,
and computes their cross-entropy with `linear_cross_entropy` (chunked; see `dc.models.llms.linear_ce`).

Same value and gradients as HF's loss, except that a batch with no supervised token gives 0.0 with zero gradients
(HF returns nan, 0/0, which would poison every weight through the optimizer step or a gradient all-reduce).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.loss.loss_utils import ForCausalLMLoss

from dc.models.llms.linear_ce import IMPLS, default_chunk_size, liger_available, linear_cross_entropy, resolve_impl

__all__ = [
    "IMPLS",
    "SUPPORTED_MODEL_TYPES",
    "LMHead",
    "causal_lm_loss",
    "default_chunk_size",
    "liger_available",
    "linear_cross_entropy",
    "lm_head_of",
    "resolve_impl",
    "shifted_lm_loss",
    "unwrap_causal_lm",
]

# Causal LMs whose `ForCausalLM.forward` is `lm_head(hidden)` (then the transform named here) and HF's
# `ForCausalLMLoss`, checked against transformers 5.23. Others are refused rather than silently mis-computed.
_PLAIN = ("llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "olmo2", "stablelm")
_SOFTCAPPED = ("gemma2", "gemma3_text")  # logits = cap * tanh(logits / cap), cap = config.final_logit_softcapping
_SCALED = ("cohere", "cohere2", "granite")  # logits * config.logit_scale; granite: logits / config.logits_scaling
SUPPORTED_MODEL_TYPES = _PLAIN + _SOFTCAPPED + _SCALED


@dataclass(frozen=True)
class LMHead:
    """What the loss needs from a causal LM's output layer."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    logit_scale: float = 1.0
    softcap: float | None = None


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The HF `...ForCausalLM` inside `model` (a peft `PeftModel` with LoRA layers injected in place, or itself)."""
    get_base = getattr(model, "get_base_model", None)
    if get_base is None or not hasattr(model, "peft_config"):
        return model
    config = model.peft_config[model.active_adapter]
    if getattr(config, "is_prompt_learning", False):
        raise ValueError(f"peft {config.peft_type} (prompt learning) changes the forward: causal_lm_loss supports LoRA")
    return get_base()


def lm_head_of(causal_lm: nn.Module) -> LMHead:
    """The lm_head weight/bias and logit transform of a supported HF causal LM (see `SUPPORTED_MODEL_TYPES`)."""
    config = causal_lm.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"causal_lm_loss: model_type {model_type!r} ({type(causal_lm).__name__}) is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}. MoE models (mixtral, qwen2_moe, ...) add a router loss and other "
            "architectures may transform logits: use the model's own `labels=` loss for them."
        )
    if getattr(causal_lm, "loss_function", None) is not ForCausalLMLoss:
        raise ValueError(
            f"{type(causal_lm).__name__} does not use HF's ForCausalLMLoss: causal_lm_loss cannot match it"
        )
    head = causal_lm.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"lm_head of {type(causal_lm).__name__} is a {type(head).__name__}, not an nn.Linear: LoRA or "
            "modules_to_save on lm_head, and lm_head as an FSDP unit of its own, are not supported (leave lm_head "
            "out of the LoRA targets and the FSDP wrap policy, or use the model's own `labels=` loss)"
        )
    scale, softcap = 1.0, None
    if model_type in _SOFTCAPPED:
        softcap = config.final_logit_softcapping
    elif model_type == "granite":
        scale = 1.0 / config.logits_scaling
    elif model_type in _SCALED:
        scale = float(config.logit_scale)
    return LMHead(head.weight, head.bias, scale, float(softcap) if softcap is not None else None)


def causal_lm_loss(
    model: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    impl: str = "auto",
    chunk_size: int | None = None,
    ignore_index: int = -100,
    **forward_kwargs: Any,
) -> torch.Tensor:
    """HF's `model(inputs_embeds=..., attention_mask=..., labels=labels).loss` without the [B, S, V] logits.

    Runs the decoder without its lm_head, predicts token t+1 from position t (labels shifted left, the last
    position ignored), keeps only the supervised positions and returns their mean cross-entropy in fp32: the
    same value and gradients (inputs_embeds, decoder, lm_head or tied embedding, LoRA adapters) as HF's loss,
    except that a batch with no supervised token gives 0.0 with zero gradients instead of HF's nan.

    Args:
        model: an HF `...ForCausalLM` of a supported type, or a peft LoRA `PeftModel` wrapping one.
        inputs_embeds: [B, S, d] input embeddings.
        attention_mask: [B, S] (1 = attend) or None.
        labels: [B, S] token ids, `ignore_index` where not supervised (unshifted, as for HF).
        impl: see `linear_cross_entropy`.
        chunk_size: rows per chunk; see `linear_cross_entropy`.
        ignore_index: label of unsupervised positions.
        **forward_kwargs: passed to the decoder (`position_ids`, ...); `num_items_in_batch` is taken as HF does
            (sum of token losses divided by it, for gradient accumulation across micro-batches).

    Returns:
        The scalar fp32 loss.
    """
    causal_lm = unwrap_causal_lm(model)
    head = lm_head_of(causal_lm)
    num_items = forward_kwargs.pop("num_items_in_batch", None)
    forward_kwargs.setdefault("use_cache", False)  # training forward: a KV cache would only cost memory
    hidden = causal_lm.get_decoder()(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, **forward_kwargs
    ).last_hidden_state
    return shifted_lm_loss(
        hidden, labels, head, impl=impl, chunk_size=chunk_size, ignore_index=ignore_index, num_items_in_batch=num_items
    )


def shifted_lm_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: LMHead,
    *,
    impl: str = "auto",
    chunk_size: int | None = None,
    ignore_index: int = -100,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """HF's ForCausalLMLoss from the decoder's last hidden states [B, S, d] and unshifted labels [B, S].

    Position t predicts label t+1 (the last position predicts nothing); only supervised positions reach the
    lm_head. Mean over them, or their sum divided by `num_items_in_batch` when given (0.0 when there are none).
    """
    shifted = F.pad(labels, (0, 1), value=ignore_index)[..., 1:].to(hidden.device)
    supervised = shifted != ignore_index
    rows, targets = hidden[supervised], shifted[supervised]  # [n, d], [n]: the lm_head runs on these alone
    total = linear_cross_entropy(
        rows,
        head.weight,
        targets,
        bias=head.bias,
        chunk_size=chunk_size,
        impl=impl,
        ignore_index=ignore_index,
        logit_scale=head.logit_scale,
        softcap=head.softcap,
        reduction="sum",
    )
    if num_items_in_batch is not None:
        return total / torch.as_tensor(num_items_in_batch, device=total.device)
    return total / max(rows.shape[0], 1)
