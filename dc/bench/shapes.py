"""Model shapes per mode (quick = CPU, full = GPU) and a `--tiny` shape for the smoke test."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class VitShape:
    """A CLIP-style random ViT (HF `CLIPVisionModel`)."""

    num_layers: int
    hidden_size: int
    image_size: int
    patch_size: int
    heads: int
    mlp: int
    layers: tuple[int, ...]  # SCI / STI taps
    groups: tuple[tuple[int, int], ...]  # DCI groups (inclusive ranges)

    @property
    def grid_tokens(self) -> int:
        """Patch tokens per image (CLS excluded)."""
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class LlmShape:
    """A random Llama-style LLM."""

    hidden_size: int
    num_layers: int
    heads: int
    mlp: int
    vocab_size: int | None = None  # None: the built-in tiny tokenizer's size


@dataclass(frozen=True)
class FigureShape:
    """What one figure builds: a ViT, an LLM, and the token budget."""

    vit: VitShape
    llm: LlmShape
    seq: int  # total sequence incl. the baseline's visual tokens
    batch: int = 1
    new_tokens: int = 0  # decode length (P3)
    extra: dict = field(default_factory=dict)


VIT_P1_CPU = VitShape(12, 256, 224, 16, 4, 1024, (3, 7), ((0, 5), (6, 11)))
VIT_CLIP24_CPU = VitShape(24, 128, 224, 14, 4, 512, (7, 15), ((0, 11), (12, 23)))
VIT_P3_CPU = VitShape(24, 64, 336, 14, 4, 256, (7, 15), ((0, 11), (12, 23)))
VIT_CLIP_L = VitShape(24, 1024, 336, 14, 16, 4096, (7, 15), ((0, 11), (12, 23)))
VIT_TINY = VitShape(12, 32, 32, 8, 2, 64, (3, 7), ((0, 5), (6, 11)))
VIT_TINY24 = VitShape(24, 32, 32, 8, 2, 64, (7, 15), ((0, 11), (12, 23)))

LLM_CPU = LlmShape(512, 4, 8, 1376)
LLM_SMALL_CPU = LlmShape(256, 4, 4, 688)
LLM_1B = LlmShape(2048, 16, 16, 5632, vocab_size=32000)  # TinyLlama-1.1B shape
LLM_7B = LlmShape(4096, 32, 32, 11008, vocab_size=32000)  # Vicuna-7B shape
LLM_TINY = LlmShape(64, 2, 2, 128)

SHAPES: dict[str, dict[str, FigureShape]] = {
    "quick": {
        "P1": FigureShape(VIT_P1_CPU, LLM_CPU, seq=512),
        "P3": FigureShape(VIT_P3_CPU, LLM_SMALL_CPU, seq=576 + 64, new_tokens=16),
        "P4": FigureShape(VIT_CLIP24_CPU, LLM_SMALL_CPU, seq=512),
        "P5": FigureShape(VIT_P1_CPU, LLM_CPU, seq=512),
        "P7": FigureShape(VIT_P1_CPU, LLM_CPU, seq=512),
    },
    "full": {
        "P1": FigureShape(VIT_CLIP_L, LLM_1B, seq=2048, batch=4),
        "P3": FigureShape(VIT_CLIP_L, LLM_7B, seq=576 + 64, new_tokens=128),
        "P4": FigureShape(VIT_CLIP_L, LLM_1B, seq=2048, batch=4),
        "P5": FigureShape(VIT_CLIP_L, LLM_1B, seq=2048, batch=4),
        "P7": FigureShape(VIT_CLIP_L, LLM_1B, seq=2048, batch=4),
    },
    "tiny": {
        "P1": FigureShape(VIT_TINY, LLM_TINY, seq=48),
        "P3": FigureShape(VIT_TINY, LLM_TINY, seq=16 + 8, new_tokens=2),
        "P4": FigureShape(VIT_TINY24, LLM_TINY, seq=48),
        "P5": FigureShape(VIT_TINY, LLM_TINY, seq=48),
        "P7": FigureShape(VIT_TINY, LLM_TINY, seq=48),
    },
}


def shape_for(mode: str, figure: str, tiny: bool) -> FigureShape:
    """The shape of `figure` in `mode` (the tiny table when `tiny`)."""
    return replace(SHAPES["tiny" if tiny else mode][figure])
