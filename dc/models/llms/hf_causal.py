"""A Hugging Face causal LM with its tokenizer and chat template (`llm._target_`).

`pretrained` (a hub id or a local directory) loads with `from_pretrained`; without it the model is built with
random weights from `config` (the offline tiny default). Both paths give the same wrapper.

Training speed and memory (docs/training.md, "Speed and memory"): the training loss never builds full logits
(`loss`: chunked or Liger linear + cross-entropy over the supervised positions only; `dense` is HF's own
`labels=` loss); with a `TokenLayout` the decoder runs unpadded (`attention: unpadded`, varlen attention on one
packed row, no mask) and every shape is known on the host (no device syncs in the forward); decoder layers can be
checkpointed (`activation_checkpointing`) and compiled (`compile`). Inference (no labels) returns HF's outputs with
`.logits`, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from dc.models.compiling import compile_on_first_training, compile_options
from dc.models.hub import from_pretrained
from dc.models.llms.base import LanguageModel
from dc.models.llms.checkpointing import MODES, apply_activation_checkpointing
from dc.models.llms.layout import TokenLayout
from dc.models.llms.linear_ce import IMPLS, linear_cross_entropy
from dc.models.llms.loss import causal_lm_loss, lm_head_of, unwrap_causal_lm
from dc.models.llms.templates import ChatTemplate
from dc.models.llms.tokenizers import load_tokenizer
from dc.models.llms.varlen import (
    BACKENDS,
    VARLEN,
    HostBounds,
    packed_mask,
    register_varlen_attention,
    resolve_backend,
)
from dc.utils.errors import ConfigError


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
        loss: training loss: "auto" (Liger's fused kernel on CUDA when installed, else "chunked"), "chunked"
            (PyTorch, any device), "liger", or "dense" (HF's own `labels=` loss with full fp32 logits).
        loss_chunk_size: rows per chunk of the chunked loss (None: about 512 MiB of fp32 logits per chunk).
        attention: "unpadded" (training batches with a packed `TokenLayout` run on one row with varlen attention;
            needs `attn_implementation: sdpa`) or "padded" (padded batches, SDPA with a mask when there is padding).
        varlen_backend: "auto", "flash_attn", "torch_varlen" or "sdpa_loop" (see `dc.models.llms.varlen`).
        activation_checkpointing: "none", "selective" or "full" (see `dc.models.llms.checkpointing`).
        compile: `torch.compile` every decoder layer when the model first enters training mode (True, or a dict
            of `torch.compile` options).
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
        loss: str = "auto",
        loss_chunk_size: int | None = None,
        attention: str = "unpadded",
        varlen_backend: str = "auto",
        activation_checkpointing: str = "none",
        compile: bool | Mapping[str, Any] = False,  # noqa: A002 - the config key's name
    ) -> None:
        super().__init__()
        _check_speed_options(
            loss, loss_chunk_size, attention, varlen_backend, activation_checkpointing, attn_implementation
        )
        self.loss = loss
        self.loss_chunk_size = loss_chunk_size
        self.attention = attention
        self.varlen_backend = varlen_backend
        self.activation_checkpointing = activation_checkpointing
        self.compile_options = compile_options(compile, "llm.compile")
        self.compiled = False
        if attention == "unpadded":
            register_varlen_attention()
            attn_implementation = VARLEN  # SDPA for every ordinary call; varlen for packed training calls
        if not isinstance(template, ChatTemplate):
            raise ConfigError(f"llm.template must be a chat template config (configs/llm/template/), got {template!r}")
        source = tokenizer if tokenizer is not None else pretrained
        if source is None:
            raise ConfigError("llm.tokenizer must be set when llm.pretrained is null")
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
            raise ConfigError(
                f"llm.hidden_size={hidden_size} does not match the checkpoint ({self.model.config.hidden_size})"
            )
        if len(self.tokenizer) > self.model.get_input_embeddings().num_embeddings:
            raise ValueError(
                f"tokenizer has {len(self.tokenizer)} tokens but the model's embedding has "
                f"{self.model.get_input_embeddings().num_embeddings}"
            )
        apply_activation_checkpointing(self.model, activation_checkpointing)

    def train(self, mode: bool = True) -> HFCausalLM:
        """Training mode; with `compile`, the decoder layers are compiled the first time (never for inference)."""
        super().train(mode)
        if mode:
            compile_on_first_training(self, self.decoder_layers())
        return self

    def layout_mode(self) -> str | None:
        return "packed" if self.attention == "unpadded" else "padded"

    def decoder_layers(self) -> list[nn.Module]:
        """The decoder layer modules, in order."""
        classes = tuple(self.decoder_layer_classes())
        return [m for m in self.model.modules() if isinstance(m, classes)]

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
        # By any class in the MRO: FSDP2 swaps a sharded layer's class for a subclass (`FSDPLlamaDecoderLayer`).
        return {type(m) for m in self.model.modules() if any(c.__name__ in names for c in type(m).__mro__)}

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        layout: TokenLayout | None = None,
        **kwargs: Any,
    ) -> Any:
        """HF's outputs (`.logits`) without labels; with labels or a `layout`, an output whose `.loss` is the mean
        cross-entropy over the supervised positions (no logits: `loss` decides how it is computed).
        """
        if layout is not None:
            return CausalLMOutputWithPast(loss=self._layout_loss(inputs_embeds, attention_mask, layout, **kwargs))
        if labels is None or self.loss == "dense":
            return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)
        loss = causal_lm_loss(
            self.model, inputs_embeds, attention_mask, labels, impl=self.loss, chunk_size=self.loss_chunk_size, **kwargs
        )
        return CausalLMOutputWithPast(loss=loss)

    def _layout_loss(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, layout: TokenLayout, **kwargs: Any
    ) -> torch.Tensor:
        """The training loss from a host-computed layout: no device sync, no logits beyond one chunk."""
        causal_lm = unwrap_causal_lm(self.model)
        head = lm_head_of(causal_lm)
        decoder = causal_lm.get_decoder()
        kwargs.setdefault("use_cache", False)
        if layout.packed:
            if self.attention != "unpadded":
                raise ValueError("a packed TokenLayout needs llm.attention=unpadded")
            width = inputs_embeds.shape[-1]
            packed = inputs_embeds.reshape(-1, width).index_select(0, layout.token_index).unsqueeze(0)
            device_type = packed.device.type
            dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else packed.dtype
            backend = resolve_backend(self.varlen_backend, packed.device, dtype)
            varlen: dict[str, Any] = {
                "cu_seq_lens_q": layout.cu_seqlens,
                "cu_seq_lens_k": layout.cu_seqlens,
                "max_length_q": layout.max_seqlen,
                "max_length_k": layout.max_seqlen,
                "varlen_backend": backend,
            }
            if backend == "sdpa_loop":
                # opaque to a compiled layer, which would guard on a tuple's length (a recompile per batch)
                varlen["seq_bounds"] = HostBounds(layout.seq_bounds)
            out = decoder(
                inputs_embeds=packed,
                attention_mask=packed_mask(packed.device),
                position_ids=layout.position_ids,
                **varlen,
                **kwargs,
            )
        else:
            mask = attention_mask if layout.has_padding else None  # no padding: plain causal attention, no mask
            out = decoder(inputs_embeds=inputs_embeds, attention_mask=mask, **kwargs)
        hidden = out.last_hidden_state
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, layout.loss_rows)
        total = linear_cross_entropy(
            rows,
            head.weight,
            layout.loss_targets,
            bias=head.bias,
            chunk_size=self.loss_chunk_size,
            impl=self.loss,
            logit_scale=head.logit_scale,
            softcap=head.softcap,
            reduction="sum",
        )
        return total / max(layout.num_supervised, 1)

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


def check_llm_node(node: Any) -> None:
    """The speed options of an `llm` config node (`HFCausalLM`'s, with its defaults), checked before anything is
    built.

    Raises:
        ConfigError: naming the key.
    """
    import inspect

    defaults = {
        name: p.default
        for name, p in inspect.signature(HFCausalLM.__init__).parameters.items()
        if p.default is not p.empty
    }
    names = (
        "loss",
        "loss_chunk_size",
        "attention",
        "varlen_backend",
        "activation_checkpointing",
        "attn_implementation",
    )
    _check_speed_options(*(node.get(name, defaults[name]) for name in names))
    compile_options(node.get("compile", defaults["compile"]), "llm.compile")


def _check_speed_options(
    loss: str,
    chunk_size: int | None,
    attention: str,
    varlen_backend: str,
    activation_checkpointing: str,
    attn_implementation: str,
) -> None:
    if loss not in IMPLS:
        raise ConfigError(f"llm.loss={loss!r}: expected one of {IMPLS}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ConfigError(f"llm.loss_chunk_size={chunk_size!r}: expected a positive integer or null")
    if attention not in ("unpadded", "padded"):
        raise ConfigError(f"llm.attention={attention!r}: expected 'unpadded' or 'padded'")
    if attention == "unpadded" and attn_implementation not in ("sdpa", VARLEN):
        raise ConfigError(
            f"llm.attention=unpadded needs llm.attn_implementation=sdpa (got {attn_implementation!r}); "
            "set llm.attention=padded to use another attention implementation"
        )
    if varlen_backend not in BACKENDS:
        raise ConfigError(f"llm.varlen_backend={varlen_backend!r}: expected one of {BACKENDS}")
    if activation_checkpointing not in MODES:
        raise ConfigError(f"llm.activation_checkpointing={activation_checkpointing!r}: expected one of {MODES}")


def llm_hidden_size(cfg: Any) -> int:
    """d_llm as declared by an `llm` config node."""
    if cfg.get("hidden_size") is None:
        raise ConfigError("llm.hidden_size must be set")
    value = cfg.get("hidden_size")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"llm.hidden_size={value!r} must be a positive integer")
    return int(value)
