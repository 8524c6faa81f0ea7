"""LoRA on the LLM (`stage.lora`): targets, injection, merge and export.

Targets are found by walking the LLM's `nn.Linear` modules (LLaVA's `find_all_linear_names`): every Linear leaf
name except the output head (`lm_head`, or whatever `get_output_embeddings()` is) and `stage.lora.exclude`. Peft's
per-architecture default (q_proj, v_proj for Llama) is never used. The vision encoder and the connector are
outside the wrapped model, so they never get adapters; the connector trains as a plain module at its own LR.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from dc.utils.errors import ConfigError, config_number

log = logging.getLogger(__name__)

LORA_KEY = ".lora_"  # every adapter tensor name contains this (lora_A, lora_B, lora_embedding_*, lora_magnitude_*)


def lora_target_names(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Sorted leaf names of the `nn.Linear` modules of `model`, without the output head and `exclude`."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: set[str] = set()
    skipped: set[str] = set(exclude)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if module is head or leaf == "lm_head":
            skipped.add(leaf)
            continue
        names.add(leaf)
    unknown = sorted(set(exclude) - names - skipped_heads(model, head))
    if unknown:
        raise ConfigError(
            f"stage.lora.exclude: {unknown} name no nn.Linear of {type(model).__name__} (its linear layers: "
            f"{sorted(names)})"
        )
    targets = sorted(names - skipped)
    if not targets:
        raise ConfigError(
            f"stage.lora: no nn.Linear targets left in {type(model).__name__} after excluding {sorted(skipped)}"
        )
    return targets


def skipped_heads(model: nn.Module, head: nn.Module | None) -> set[str]:
    """Leaf names of the output head's `nn.Linear` (never a LoRA target, so naming it in `exclude` is allowed)."""
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (module is head or name.rsplit(".", 1)[-1] == "lm_head")
    }


LORA_BIAS = ("none", "all", "lora_only")


def check_lora_settings(cfg: Any) -> None:
    """The `stage.lora` node's values, checked before any model is built (peft would refuse them later, naming no
    key, or `int("abc")` would).

    Raises:
        ConfigError: naming the `stage.lora.*` key, its value and what is expected.
    """
    for key, kind in (("r", int), ("alpha", float)):
        value = config_number(cfg.get(key), f"stage.lora.{key}", kind)
        if value <= 0:
            raise ConfigError(f"stage.lora.{key}={cfg.get(key)!r}: expected a positive number")
    dropout = config_number(cfg.get("dropout", 0.0), "stage.lora.dropout")
    if not 0 <= dropout < 1:
        raise ConfigError(f"stage.lora.dropout={cfg.get('dropout')!r}: expected a number in [0, 1)")
    if cfg.get("bias", "none") not in LORA_BIAS:
        raise ConfigError(f"stage.lora.bias={cfg.get('bias')!r}: expected one of {LORA_BIAS}")
    exclude = cfg.get("exclude") or []
    if isinstance(exclude, str) or not all(isinstance(name, str) for name in exclude):
        raise ConfigError(f"stage.lora.exclude={exclude!r}: expected a list of layer names, e.g. [gate_proj]")


def lora_config(cfg: Any, targets: list[str]) -> LoraConfig:
    """Peft `LoraConfig` from the `stage.lora` node (r, alpha, dropout, bias)."""
    check_lora_settings(cfg)
    return LoraConfig(
        r=int(cfg.r),
        lora_alpha=float(cfg.alpha),  # not int(): alpha=0.5 would become 0 and the adapters add nothing
        lora_dropout=float(cfg.get("dropout", 0.0)),
        bias=str(cfg.get("bias", "none")),
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def apply_lora(llm: nn.Module, cfg: Any) -> dict[str, int]:
    """Wrap `llm.model` (the HF causal LM of a `LanguageModel`) in a peft LoRA model; return parameter counts.

    Peft freezes the base model and leaves only the adapters trainable.
    """
    targets = lora_target_names(llm.model, tuple(cfg.get("exclude") or ()))
    llm.model = get_peft_model(llm.model, lora_config(cfg, targets))
    adapters = sum(p.numel() for n, p in llm.named_parameters() if LORA_KEY in n)
    base = sum(p.numel() for n, p in llm.named_parameters() if LORA_KEY not in n)
    log.info(
        "LoRA r=%s alpha=%s dropout=%s on %s: %s adapter parameters over a frozen base of %s",
        cfg.r,
        cfg.alpha,
        cfg.dropout,
        targets,
        f"{adapters:,}",
        f"{base:,}",
    )
    return {"adapters": adapters, "base": base}


def has_lora(llm: nn.Module) -> bool:
    return isinstance(getattr(llm, "model", None), PeftModel)


def merge_lora(llm: nn.Module) -> None:
    """Fold the adapters into the base weights in place (`merge_and_unload`): `llm.model` is a plain HF model again."""
    if not has_lora(llm):
        raise ValueError("merge_lora: this LLM has no LoRA adapters")
    llm.model = llm.model.merge_and_unload()


def export_lora(vlm: Any, out_dir: str | Path, merge: bool = False) -> Path:
    """Write a LoRA-trained VLM as `adapter/` (peft `save_pretrained`), `connector.pt` and, with `merge`, `llm/`
    (the merged HF model and tokenizer, loadable as `llm.pretrained`). Merge after consolidating an FSDP
    checkpoint, on one process: peft does not support merging sharded models. `merge` modifies `vlm` in place.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    llm = vlm.llm
    if not has_lora(llm):
        raise ValueError("export_lora: the model has no LoRA adapters (stage.lora is null)")
    llm.model.save_pretrained(out / "adapter")
    torch.save(vlm.connector.state_dict(), out / "connector.pt")
    if merge:
        merge_lora(llm)
        llm.model.save_pretrained(out / "llm")
        llm.tokenizer.save_pretrained(out / "llm")
    return out
