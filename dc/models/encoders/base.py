"""The vision-encoder contract: layouts, taps, and the reference tap computation.

Shape letters used throughout `dc`: B batch, P prefix (CLS) tokens, N patch tokens, D encoder width,
L number of encoder blocks. Layer indices follow Hugging Face `hidden_states`: 0 is the embedding output
(after CLIP's pre-LayerNorm), i is the output of block i, so there are L + 1 of them; negatives count from
the end. The paper's "layer k" is index k - 1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dc.models.compiling import compile_on_first_training, compile_options
from dc.utils.errors import ConfigError

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
        input_size: side of the pixels the encoder takes (the data layer's views); None means `image_size`.
            Larger for a dual tower (Mini-Gemini: 768 px views, the 336 px CLIP view interpolated from them).
    """

    name: str
    num_layers: int
    hidden_size: int
    image_size: int
    patch_size: int
    num_prefix_tokens: int
    input_size: int | None = None

    def __post_init__(self) -> None:
        if self.input_size is None:  # a single tower takes pixels at its own resolution
            object.__setattr__(self, "input_size", self.image_size)

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


def collect_taps(
    hidden_states: Sequence[torch.Tensor], taps: Sequence[Tap], num_prefix_tokens: int
) -> list[torch.Tensor]:
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


class VisionEncoder(nn.Module, ABC):
    """The encoder contract: pixels in, the requested taps out.

    Subclasses are built for a fixed list of taps (so they can drop the blocks no tap needs) and implement
    `embed`, `blocks` and `block_classes`; this class runs them and keeps only running sums, never all states.
    What other layers use: `layout`, `taps`, `freeze`, `forward`, `block_classes` (FSDP wrap units) and `dtype`.

    Args:
        layout: the full model's layout.
        taps: the features to return (non-negative index groups, see `Tap`).
        freeze: frozen tower: no gradients, eval mode, run under `no_grad`.
        micro_batch: run at most this many images through the blocks at a time (None: the whole batch). The
            taps are identical; the peak drops because a block's scratch activations (the MLP's 4·D-wide
            hidden layer dominates) scale with the images in flight. Useful for a frozen tower at large batch.
        compile: `torch.compile` the blocks that run (True, or a mapping of `torch.compile` options) the first
            time the model enters training mode (`dc.models.compiling`); never for inference-only use.
    """

    def __init__(
        self,
        layout: EncoderLayout,
        taps: Sequence[Tap],
        freeze: bool = True,
        micro_batch: int | None = None,
        compile: bool | Mapping[str, Any] = False,  # noqa: A002 - the config key's name
    ) -> None:
        super().__init__()
        self.compile_options = compile_options(compile, "encoder.model.compile")
        self.compiled = False
        valid = micro_batch is None or (type(micro_batch) is int and micro_batch >= 1)
        if not valid:
            raise ConfigError(f"encoder.model.micro_batch={micro_batch!r} must be a positive integer or null")
        self.layout = layout
        self.taps = [tuple(t) for t in taps]
        self.freeze = freeze
        self.micro_batch = micro_batch
        self.depth = max(max(t) for t in self.taps)
        """Blocks actually run: the deepest requested index."""

    @abstractmethod
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return hidden state 0: [B, P + N, D]."""

    @abstractmethod
    def blocks(self) -> Sequence[nn.Module]:
        """The first `self.depth` transformer blocks, each mapping [B, P + N, D] to the same shape."""

    @abstractmethod
    def block_classes(self) -> set[type[nn.Module]]:
        """Transformer block classes: the FSDP wrap units of the tower."""

    def run_block(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Apply one block (override when a block needs extra arguments)."""
        return block(hidden)

    def _apply_freeze(self) -> None:
        """Call at the end of a subclass's `__init__`: a frozen tower gets no gradients and stays in eval mode."""
        if self.freeze:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> VisionEncoder:
        """Keep a frozen tower in eval mode whatever the trainer asks (no dropout, fixed features); with `compile`,
        the blocks that run are compiled the first time training is asked for (frozen or not).
        """
        super().train(mode and not self.freeze)
        if mode:
            compile_on_first_training(self, list(self.blocks()[: self.depth]))
        return self

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype (inputs are cast to it)."""
        return next(self.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Encode images into one [B, N, D] tensor per tap (prefix tokens dropped).

        Only the first `depth` blocks run. A single-index tap keeps a reference to that state; a group tap keeps
        one fp32 running sum, so at most (2 + number of taps) states are alive at once instead of all L + 1.
        A frozen encoder runs under `no_grad`, so its outputs never require grad.
        """
        grad = torch.is_grad_enabled() and not self.freeze
        with torch.set_grad_enabled(grad):
            pixel_values = pixel_values.to(self.dtype)
            batch, step = pixel_values.shape[0], self.micro_batch
            if step is None or batch <= step:
                return self._forward(pixel_values)
            starts = range(0, batch, step)
            if grad:
                parts = [self._forward(pixel_values[i : i + step]) for i in starts]
                return [torch.cat(chunks) for chunks in zip(*parts, strict=True)]
            out: list[torch.Tensor] = []
            for i in starts:  # no autograd: fill preallocated outputs, keep one chunk's taps at a time
                part = self._forward(pixel_values[i : i + step])
                if not out:
                    out = [t.new_empty((batch, *t.shape[1:])) for t in part]
                for k in range(len(out)):
                    out[k][i : i + step] = part[k]
                del part
            return out

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
        for k, tap in enumerate(self.taps):
            total, sums[k] = sums[k], None  # release each sum as soon as its mean exists
            # Out of place under autograd (the graph keeps the sum); in place otherwise (one state less).
            feature = total if len(tap) == 1 else (total / len(tap) if total.requires_grad else total.div_(len(tap)))
            out.append(feature.to(hidden.dtype)[:, self.layout.num_prefix_tokens :])
        return out

    def _accumulate(self, index: int, hidden: torch.Tensor, sums: list, users: dict[int, list[int]]) -> None:
        for k in users.get(index, ()):
            if len(self.taps[k]) == 1:
                sums[k] = hidden
            elif sums[k] is None:
                sums[k] = hidden.to(torch.float32, copy=True)
            else:
                sums[k].add_(hidden)
