"""A Hugging Face causal LM with its tokenizer and chat template.

`pretrained` (a hub id or a local directory) loads with `from_pretrained`; without it the model is built with
random weights from `config` (the offline tiny default). Both paths give the same wrapper.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from dc.models.llms.templates import ChatTemplate, get_template
from dc.models.llms.tiny_tokenizer import build_tiny_tokenizer

BUILTIN_TOKENIZERS = {"builtin:tiny": build_tiny_tokenizer}


def load_tokenizer(name: str, pad_token: str | None = None) -> PreTrainedTokenizerBase:
    """A built-in offline tokenizer (`builtin:tiny`) or `AutoTokenizer.from_pretrained(name)`."""
    tokenizer = BUILTIN_TOKENIZERS[name]() if name in BUILTIN_TOKENIZERS else AutoTokenizer.from_pretrained(name)
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    if tokenizer.pad_token is None:
        raise ValueError(f"tokenizer {name!r} has no pad token: set llm.pad_token")
    return tokenizer


class LanguageModel(nn.Module):
    """The LLM part of a VLM.

    Args:
        template: chat-template name (`llm.template`).
        hidden_size: d_llm, declared in config so connectors are sized before any weights load (checked
            against the loaded model).
        pretrained: hub id or local directory; None builds random weights from `config`.
        tokenizer: tokenizer name or path; defaults to `pretrained`.
        config: model config values (random init) or overrides of the pretrained config.
        pad_token: pad token to set on the tokenizer (Vicuna: `<unk>`).
        dtype: parameter dtype name.
        attn_implementation: "sdpa" (default), "eager" or "flash_attention_2".
    """

    def __init__(
        self,
        *,
        template: str,
        hidden_size: int,
        pretrained: str | None = None,
        tokenizer: str | None = None,
        config: dict[str, Any] | None = None,
        pad_token: str | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        tok_name = tokenizer or pretrained
        if tok_name is None:
            raise ValueError("llm.tokenizer must be set when llm.pretrained is null")
        self.tokenizer = load_tokenizer(tok_name, pad_token)
        self.template: ChatTemplate = get_template(template)
        torch_dtype = getattr(torch, dtype)
        overrides = dict(config or {})
        model_type = overrides.pop("model_type", "llama")  # only meaningful for random init
        if pretrained:
            self.model = AutoModelForCausalLM.from_pretrained(
                pretrained, dtype=torch_dtype, attn_implementation=attn_implementation, **overrides
            )
        else:
            overrides.setdefault("vocab_size", len(self.tokenizer))
            overrides["hidden_size"] = hidden_size
            hf_config = AutoConfig.for_model(model_type, **overrides)
            hf_config.pad_token_id = self.tokenizer.pad_token_id
            hf_config.bos_token_id = self.tokenizer.bos_token_id
            hf_config.eos_token_id = self.tokenizer.eos_token_id
            self.model = AutoModelForCausalLM.from_config(
                hf_config, dtype=torch_dtype, attn_implementation=attn_implementation
            )
        if self.model.config.hidden_size != hidden_size:
            raise ValueError(
                f"llm.hidden_size={hidden_size} does not match the checkpoint ({self.model.config.hidden_size})"
            )
        if len(self.tokenizer) > self.model.get_input_embeddings().num_embeddings:
            raise ValueError(
                f"tokenizer has {len(self.tokenizer)} tokens but the model's embedding has "
                f"{self.model.get_input_embeddings().num_embeddings}"
            )

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, S, d_llm]."""
        return self.model.get_input_embeddings()(input_ids)

    def decoder_layer_classes(self) -> set[type[nn.Module]]:
        """Decoder block classes (FSDP wrap and activation-checkpointing units)."""
        names = set(getattr(self.model, "_no_split_modules", None) or [])
        return {type(m) for m in self.model.modules() if type(m).__name__ in names}

    def forward(self, **kwargs: Any) -> Any:
        return self.model(**kwargs)


def llm_hidden_size(cfg: Any) -> int:
    """d_llm as declared by an `llm` config node."""
    if cfg.get("hidden_size") is None:
        raise ValueError("llm.hidden_size must be set")
    return int(cfg.hidden_size)
