"""Reading reference (LLaVA-layout) directories and writing their LLM as a plain Hugging Face directory.

Weights load with safetensors or `torch.load(weights_only=True)`, from one file, shards listed in an index json,
or a stage-1 `mm_projector.bin`; nothing runs remote code. See `dc.export.reference` for the mapping onto dc.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from dc.export.errors import ExportError
from dc.export.staging import umask_modes
from dc.export.weights import assemble

MULTIMODAL_PREFIXES = ("model.mm_projector.", "model.vision_tower.", "model.vision_resampler.")
LLAVA_KEYS = (
    "freeze_mm_mlp_adapter", "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length",
    "tokenizer_padding_side", "tune_mm_mlp_adapter", "use_mm_proj", "unfreeze_mm_vision_tower", "is_video", "if_pool",
)  # fmt: skip
LLAMA3_PAD = "<|reserved_special_token_0|>"  # the reference's Llama-3 pad
MODEL_TYPES = ("llava_llama", "llama")


def read_config(src: Path) -> dict[str, Any] | None:
    """The directory's `config.json`, or None (a bare stage-1 projector directory)."""
    path = src / "config.json"
    return json.loads(path.read_text()) if path.exists() else None


def check_model_type(config: dict[str, Any], src: Path) -> None:
    """Refuse a `config.json` that is not the reference's (LLaVA's `llava_llama`); checked before anything else."""
    model_type = config.get("model_type")
    if model_type in MODEL_TYPES:
        return
    if model_type == "llava":
        raise ExportError(
            f"{src}/config.json: model_type='llava' is a stock Hugging Face Llava (such as python -m dc.export "
            f"writes), not a reference (LLaVA-layout, llava_llama) directory: nothing to import; use it as it is "
            f"(eval.py model=hf model.path={src})"
        )
    raise ExportError(f"{src}/config.json: model_type={model_type!r}; only llava_llama (Llama LLMs) is supported")


class _DropModelTypeWarning(logging.Filter):
    def __init__(self, model_type: str) -> None:
        super().__init__()
        self.text = f"You are using a model of type `{model_type}` to instantiate a model of type ``"

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.text)


@contextmanager
def _quiet_config_fallback(model_type: str) -> Iterator[None]:
    """Silence transformers' warning that `model_type` (unknown to it, e.g. `llava_llama`) is read as a generic
    config: `AutoTokenizer` reads `config.json` only to look up a tokenizer class by model type, finds none for
    LLaVA's type and falls back to the generic config, while the tokenizer itself comes from the tokenizer files
    (`tokenizer_config.json`'s class). No model is built from that config, so the warning is expected and harmless.
    """
    logger = logging.getLogger("transformers.configuration_utils")
    quiet = _DropModelTypeWarning(model_type)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def weight_files(src: Path) -> list[Path]:
    """The weight files of a reference directory: an index's shards, one model file, or `mm_projector.bin`."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (src / index).exists():
            weight_map = json.loads((src / index).read_text())["weight_map"]
            return [src / name for name in sorted(set(weight_map.values()))]
    for name in ("model.safetensors", "pytorch_model.bin", "mm_projector.bin"):
        if (src / name).exists():
            return [src / name]
    raise ExportError(
        f"{src}: no weights (expected model.safetensors / pytorch_model.bin, an index json, or mm_projector.bin)"
    )


def load_state(src: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's weight files, under the reference's names."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(src):
        state.update(_load_file(path))
    return state


def projector_state(state: dict[str, torch.Tensor], src: Path) -> dict[str, torch.Tensor]:
    """`*mm_projector.{0,2}.{weight,bias}` → dc's `projector.{0,2}.*` (mlp2x_gelu)."""
    out = {}
    for key, value in state.items():
        if "mm_projector." in key:
            out["projector." + key.split("mm_projector.", 1)[1]] = value
    expected = {f"projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    if set(out) != expected:
        raise ExportError(f"{src}: mm_projector tensors {sorted(out)} are not mlp2x_gelu's {sorted(expected)}")
    return out


def _is_llm_key(key: str) -> bool:
    """A tensor of the Llama itself: not multimodal, not a stale rotary buffer of old transformers versions."""
    multimodal = key.startswith(MULTIMODAL_PREFIXES) or key == "model.image_newline"
    return not multimodal and not key.endswith("rotary_emb.inv_freq")


def default_pad(tokenizer: Any, src: Path) -> str:
    """LLaVA's pad for a tokenizer saved without one: its unk token (Vicuna), else Llama-3's reserved token 0."""
    if tokenizer.unk_token is not None:
        return tokenizer.unk_token
    if LLAMA3_PAD in tokenizer.get_vocab():
        return LLAMA3_PAD
    raise ExportError(f"{src}: the tokenizer has no pad or unk token; pass --pad-token (pad_token= in Python)")


def write_llm(state: dict[str, torch.Tensor], config: dict[str, Any], src: Path, out: Path) -> LlamaConfig:
    """Write the reference's Llama as a plain `LlamaForCausalLM` directory (config, weights, tokenizer); its files
    get the umask's modes (`dc.export.staging.umask_modes`).
    """
    check_model_type(config, src)
    values = {k: v for k, v in config.items() if not (k.startswith("mm_") or k in LLAVA_KEYS or k == "model_type")}
    llm_config = LlamaConfig(**{**values, "architectures": ["LlamaForCausalLM"]})
    llm_state = {k: v for k, v in state.items() if _is_llm_key(k)}
    model = assemble(LlamaForCausalLM, llm_config, llm_state, f"{src} (LLM tensors)")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    with _quiet_config_fallback(str(config.get("model_type"))):
        tokenizer = AutoTokenizer.from_pretrained(src)
    tokenizer.save_pretrained(out)
    umask_modes(out)
    return llm_config
