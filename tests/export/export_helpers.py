"""Helpers for the export tests: tiny dc models from the real configs, offline tokenizers, probe inputs, and the
reference's computation written out as plain tensor ops (as in the reference code)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    LlamaTokenizerFast,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from dc.models.builder import build_vlm
from dc.models.llms.templates.llama3 import LLAMA_3_SYSTEM
from dc.models.llms.templates.vicuna import VICUNA_SYSTEM
from dc.models.vlm import VLM

from dc_testing import compose_config

QUESTIONS = ["What is in the image?", "Describe the picture in one word.", "Is there a red square?"]
CORPUS = [VICUNA_SYSTEM, LLAMA_3_SYSTEM, "USER: ASSISTANT: system user assistant", *QUESTIONS, "A red square.", "\n"]
LLAMA_3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                    "<|reserved_special_token_0|>"]  # fmt: skip
LLAMA_3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)


def tiny_cfg(*overrides: str):
    """`train.yaml` composed with the given overrides (tiny LLM unless overridden)."""
    return compose_config("train", ["llm=tiny", "paths.output_dir=/tmp/dc-export-test", "run_name=x", *overrides])


def tiny_vlm(*overrides: str, seed: int = 0) -> tuple[VLM, object]:
    """A tiny random VLM built by `build_vlm` from the real configs, in eval mode, and its config."""
    cfg = tiny_cfg(*overrides)
    torch.manual_seed(seed)
    vlm = build_vlm(cfg).eval()
    # HF's random init (std 0.02) leaves every logit near 0, so greedy picks would hinge on rounding; unit-variance
    # weights spread the logits (and make visual tokens matter), which makes the equality checks meaningful.
    with torch.no_grad():
        for p in list(vlm.llm.parameters()) + list(vlm.connector.parameters()):
            if p.dim() > 1:
                p.normal_(0, p.shape[1] ** -0.5)
    return vlm, cfg


def probe_image(w: int, h: int, seed: int) -> Image.Image:
    """A deterministic random RGB image."""
    gen = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy(), "RGB")


# --------------------------------------------------------------------------------------------------------------
# Offline tokenizers (the real classes, BPE models trained on a tiny corpus)


@functools.cache
def _sentencepiece_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    import json

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def llama2_tokenizer(legacy: bool) -> PreTrainedTokenizerBase:
    """Vicuna / Llama-2 style (Metaspace, byte fallback, BOS added by the tokenizer); `legacy=False` gives prefix
    scheme "first" (no "▁" after special tokens), `legacy=True` "always"."""
    vocab, merges = _sentencepiece_bpe()
    tok = LlamaTokenizerFast(vocab=vocab, merges=merges, add_bos_token=True, legacy=legacy)
    tok.pad_token = tok.unk_token
    return tok


def llama3_tokenizer(pad: bool = True) -> PreTrainedTokenizerBase:
    """Llama-3 style: regex split + byte-level BPE, prepends `<|begin_of_text|>` itself; `pad=False` leaves the pad
    token unset (as the original Llama-3 tokenizer)."""
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA_3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=LLAMA_3_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|reserved_special_token_0|>" if pad else None,
    )


def saved(tokenizer: PreTrainedTokenizerBase, path: Path) -> str:
    """Save `tokenizer` to `path` (for `llm.tokenizer=<dir>`) and return the path."""
    tokenizer.save_pretrained(path)
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# The reference's computation, written from the reference code (HF hidden_states indexing)


def reference_features(
    hidden_states: tuple[torch.Tensor, ...], kind: str, siglip: bool, select_layer: int = -2
) -> torch.Tensor:
    """DenseConnector's fused features from a *full* tower's `hidden_states` (before the projector).

    CLIP: final = hidden_states[select_layer] without CLS; SigLIP: the reference deletes the last block and takes
    the last state of what is left, i.e. index L - 1 of the full tower, all tokens. STI is not covered here.
    """
    trunc = hidden_states[:-1] if siglip else hidden_states  # SigLIP: the last block deleted

    def drop(h: torch.Tensor) -> torch.Tensor:  # CLIP intermediates lose the CLS token, SigLIP has none
        return h if siglip else h[:, 1:]

    x = drop(trunc[-1] if siglip else hidden_states[select_layer])
    if kind == "mlp":
        return x
    if kind == "sci":
        return torch.cat([x, drop(trunc[7]), drop(trunc[15])], dim=-1)
    if kind == "dci":
        lo, hi = (range(13), range(13, 26)) if siglip else (range(12), range(12, 24))
        g1 = torch.stack([drop(trunc[i]) for i in lo]).sum(0) / len(lo)
        g2 = torch.stack([drop(trunc[i]) for i in hi]).sum(0) / len(hi)
        return torch.cat([x, g1, g2], dim=-1)
    raise ValueError(kind)


def mlp2x_gelu(x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """LLaVA's mlp2x_gelu projector from `mm_projector` tensors `0.weight`, `0.bias`, `2.weight`, `2.bias`."""
    return F.linear(F.gelu(F.linear(x, w["0.weight"], w["0.bias"])), w["2.weight"], w["2.bias"])
