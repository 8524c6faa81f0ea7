"""A Hugging Face causal LM with its tokenizer and chat template (`llm._target_`).

`pretrained` (a hub id or a local directory) loads with `from_pretrained`; without it the model is built with
random weights from `config` (the offline tiny default). Both paths give the same wrapper.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase

from dc.models.hub import from_pretrained
from dc.models.llms.base import LanguageModel
from dc.models.llms.templates import ChatTemplate
from dc.models.llms.tokenizers import load_tokenizer


class HFCausalLM(LanguageModel):
    """An `AutoModelForCausalLM` (Llama/Vicuna, Llama-3, Phi-2, Yi, ...).

    Args:
        template: the chat template (`llm.template`, built from `configs/llm/template/<name>.yaml`).
        hidden_size: d_llm, declared in config so connectors are sized before any weights load (checked
            against the loaded model).
        pretrained: hub id or local directory; None builds random weights from `config`.
        tokenizer: a tokenizer object (built-in ones come from their `_target_`), a name or path, or None for
            `pretrained`'s.
        config: model config values (random init) or overrides of the pretrained config.
        pad_token: pad token to set on the tokenizer (Vicuna: `<unk>`).
        dtype: parameter dtype name.
        attn_implementation: "sdpa" (default), "eager" or "flash_attention_2".
    """

    def __init__(
        self,
        *,
        template: ChatTemplate,
        hidden_size: int,
        pretrained: str | None = None,
        tokenizer: PreTrainedTokenizerBase | str | None = None,
        config: dict[str, Any] | None = None,
        pad_token: str | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        if not isinstance(template, ChatTemplate):
            raise ValueError(f"llm.template must be a chat template config (configs/llm/template/), got {template!r}")
        source = tokenizer if tokenizer is not None else pretrained
        if source is None:
            raise ValueError("llm.tokenizer must be set when llm.pretrained is null")
        key = "llm.tokenizer" if tokenizer is not None else "llm.pretrained"
        self.tokenizer = load_tokenizer(source, pad_token, key=key)
        self.template = template
        torch_dtype = getattr(torch, dtype)
        overrides = dict(config or {})
        model_type = overrides.pop("model_type", "llama")  # only meaningful for random init
        if pretrained:
            self.model = from_pretrained(
                AutoModelForCausalLM.from_pretrained,
                pretrained,
                "llm.pretrained",
                dtype=torch_dtype,
                attn_implementation=attn_implementation,
                **overrides,
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

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def decoder_layer_classes(self) -> set[type[nn.Module]]:
        names = set(getattr(self.model, "_no_split_modules", None) or [])
        return {type(m) for m in self.model.modules() if type(m).__name__ in names}

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    def generate(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        stop_token_ids: list[int],
        **settings: Any,
    ) -> torch.Tensor:
        settings = {"do_sample": False, "num_beams": 1, "use_cache": True, **settings}
        return self.model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **settings,
        )


def llm_hidden_size(cfg: Any) -> int:
    """d_llm as declared by an `llm` config node."""
    if cfg.get("hidden_size") is None:
        raise ValueError("llm.hidden_size must be set")
    value = cfg.get("hidden_size")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"llm.hidden_size={value!r} must be a positive integer")
    return int(value)
