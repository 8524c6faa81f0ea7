"""Build a Hugging Face model from a config and move a complete state dict into it, without a random init."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from transformers import PreTrainedModel

from dc.export.errors import ExportError


def _no_init() -> AbstractContextManager:
    """Transformers' own switch that skips weight initialisation (allocation only), if this version has it."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - depends on the installed transformers
        return nullcontext()
    return no_init_weights()


def assemble(
    model_cls: type[PreTrainedModel], config: Any, state: dict[str, torch.Tensor], what: str
) -> PreTrainedModel:
    """`model_cls(config)` holding exactly `state` (tensors moved in, not copied), in eval mode.

    Non-persistent buffers (rotary frequencies, position ids) are the ones the constructor computed. The output
    head may be absent from `state` when the config ties it to the input embedding.

    Raises:
        ExportError: a key of the model is missing from `state` or `state` has a key the model lacks; names `what`.
    """
    with _no_init():
        model = model_cls(config)
    tied = {"lm_head.weight"} if model.config.get_text_config().tie_word_embeddings else set()
    result = model.load_state_dict({k: v for k, v in state.items() if k not in tied}, strict=False, assign=True)
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise ExportError(
            f"{what}: weights do not match {model_cls.__name__}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]}"
        )
    if tied:
        model.tie_weights()
    return model.eval()
