"""The vision-encoder contract: layouts, taps, and the reference tap computation.

Shape letters used throughout `dc`: B batch, P prefix (CLS) tokens, N patch tokens, D encoder width,
L number of encoder blocks. Layer indices follow Hugging Face `hidden_states`: 0 is the embedding output
(after CLIP's pre-LayerNorm), i is the output of block i, so there are L + 1 of them; negatives count from
the end. The paper's "layer k" is index k - 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

Tap = tuple[int, ...]
"""A feature a connector asks for: the mean of the hidden states at these (non-negative) indices."""


@dataclass(frozen=True)
class EncoderLayout:
    """What a connector needs to know about an encoder, known from config before any weights load.

    Attributes:
        name: config name, used in error messages.
        num_layers: L, the number of transformer blocks of the full model (24 CLIP-L, 27 SigLIP-so400m).
        hidden_size: D.
        image_size: input resolution (square).
        patch_size: patch side in pixels.
        num_prefix_tokens: P, tokens before the patches (1 for CLIP's CLS, 0 for SigLIP); dropped from taps.
    """

    name: str
    num_layers: int
    hidden_size: int
    image_size: int
    patch_size: int
    num_prefix_tokens: int

    @property
    def num_states(self) -> int:
        """Number of entries of `hidden_states`: L + 1."""
        return self.num_layers + 1

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        side = self.image_size // self.patch_size
        return side, side

    @property
    def num_patches(self) -> int:
        """N, patch tokens per image."""
        rows, cols = self.grid
        return rows * cols


def collect_taps(hidden_states: Sequence[torch.Tensor], taps: Sequence[Tap], num_prefix_tokens: int) -> list[torch.Tensor]:
    """Compute taps from a full Hugging Face `hidden_states` tuple (the plain, memory-hungry way).

    Used to check the connectors against a stock `output_hidden_states=True` forward; the encoders compute the
    same taps without keeping every state.

    Args:
        hidden_states: L + 1 tensors [B, P + N, D].
        taps: index groups; a group of one is that state, a longer group is the mean of its states.
        num_prefix_tokens: P, dropped from every tap.

    Returns:
        One [B, N, D] tensor per tap, in the dtype of the states.
    """
    out = []
    for tap in taps:
        states = [hidden_states[i] for i in tap]
        if len(states) == 1:
            feature = states[0]
        else:
            feature = torch.stack([s.float() for s in states]).mean(0).to(states[0].dtype)
        out.append(feature[:, num_prefix_tokens:])
    return out


class VisionEncoder(nn.Module):
    """Base class: pixels in, the requested taps out.

    Subclasses are built for a fixed list of taps (so they can drop the blocks no tap needs) and implement
    `embed` and `blocks`; this class runs them and keeps only running sums, never all states.
    """

    def __init__(self, layout: EncoderLayout, taps: Sequence[Tap], freeze: bool = True) -> None:
        super().__init__()
        self.layout = layout
        self.taps = [tuple(t) for t in taps]
        self.freeze = freeze
        self.depth = max(max(t) for t in self.taps)
        """Blocks actually run: the deepest requested index."""

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return hidden state 0: [B, P + N, D]."""
        raise NotImplementedError

    def blocks(self) -> Sequence[nn.Module]:
        """The first `self.depth` transformer blocks, each mapping [B, P + N, D] to the same shape."""
        raise NotImplementedError

    def run_block(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Apply one block (override when a block needs extra arguments)."""
        return block(hidden)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Encode images into one [B, N, D] tensor per tap (prefix tokens dropped).

        Group means are accumulated in fp32 as the blocks run and cast back to the state dtype.
        """
        grad = torch.is_grad_enabled() and not self.freeze
        with torch.set_grad_enabled(grad):
            return self._forward(pixel_values.to(self.dtype))

    def _forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        sums: list[torch.Tensor | None] = [None] * len(self.taps)
        users: dict[int, list[int]] = {}
        for k, tap in enumerate(self.taps):
            for i in tap:
                users.setdefault(i, []).append(k)
        hidden = self.embed(pixel_values)
        self._accumulate(0, hidden, sums, users)
        for i, block in enumerate(self.blocks()[: self.depth], start=1):
            hidden = self.run_block(block, hidden)
            self._accumulate(i, hidden, sums, users)
        out = []
        for tap, total in zip(self.taps, sums, strict=True):
            feature = total if len(tap) == 1 else (total / len(tap)).to(hidden.dtype)
            out.append(feature[:, self.layout.num_prefix_tokens :])
        return out

    def _accumulate(self, index: int, hidden: torch.Tensor, sums: list, users: dict[int, list[int]]) -> None:
        for k in users.get(index, ()):
            if len(self.taps[k]) == 1:
                sums[k] = hidden
            elif sums[k] is None:
                sums[k] = hidden.to(torch.float32, copy=True)
            else:
                sums[k].add_(hidden)
