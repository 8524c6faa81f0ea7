"""`TokenLayout`: where a right-padded batch's tokens and supervised predictions are, computed on the host.

The training forward needs, per batch: which positions are real tokens, how long each sequence is, and which
positions predict a supervised token (and what it is). Computed on the device these cost host syncs (boolean
indexing, `mask.all()`); computed here, on the CPU batch before it is moved to the device, they cost nothing on the
device and every shape is known on the host.

Two layouts:

* padded (`packed=False`): the decoder runs on [B, S]; `loss_rows` index the flattened [B·S] hidden states;
  `has_padding` says whether an attention mask is needed at all (no padding: plain causal attention, no mask);
* packed (`packed=True`): the real tokens of all rows are concatenated into one row [1, T] (`token_index` into
  the flattened [B·S] embeddings), `position_ids` restart at 0 per sequence and `cu_seqlens` mark the starts, for
  varlen attention (`dc.models.llms.varlen`); `loss_rows` index the packed [T] hidden states.

Position t predicts label t + 1 of its own sequence (HF's shift); the last token of a sequence predicts nothing, so
in the packed row no position predicts across a sequence boundary. Both layouts select the same (position,
target) pairs in the same order, so the loss — their mean cross-entropy — is the padded one's exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

IGNORE_INDEX = -100


@dataclass
class TokenLayout:
    """A batch's token layout (see the module docstring). Tensors start on the CPU; `to(device)` moves them.

    Attributes:
        packed: the decoder runs on one packed row (else on the padded [B, S] batch).
        seq_lens: real tokens per row (host).
        loss_rows: [n] indices into the flattened hidden states (packed: [T]; padded: [B·S]) of the positions
            that predict a supervised token.
        loss_targets: [n] those tokens.
        has_padding: some row is shorter than the batch's width.
        token_index: packed only: [T] flat [B·S] positions of the real tokens, in order.
        position_ids: packed only: [1, T] positions, restarting at 0 for every sequence.
        cu_seqlens: packed only: [B + 1] int32 sequence starts in the packed row.
        visual_index: [n_visual] flat [B·S] positions of the visual-token slots (where the VLM splices its visual
            tokens with `index_copy`, whose backward is an `index_select`: no data-dependent shape, no sync).
    """

    packed: bool
    seq_lens: tuple[int, ...]
    loss_rows: torch.Tensor
    loss_targets: torch.Tensor
    has_padding: bool
    token_index: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    visual_index: torch.Tensor | None = None

    @property
    def num_supervised(self) -> int:
        """Positions that predict a supervised token (the loss is their mean)."""
        return int(self.loss_rows.shape[0])

    @property
    def max_seqlen(self) -> int:
        """The longest sequence."""
        return max(self.seq_lens, default=0)

    @property
    def seq_bounds(self) -> tuple[int, ...]:
        """`cu_seqlens` on the host: 0, len_0, len_0 + len_1, ..."""
        out = [0]
        for n in self.seq_lens:
            out.append(out[-1] + n)
        return tuple(out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TokenLayout:
        """A copy with every tensor on `device`."""
        moved = {
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return TokenLayout(**moved)


def token_layout(
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    packed: bool,
    ignore_index: int = IGNORE_INDEX,
    input_ids: torch.Tensor | None = None,
    visual_token_id: int | None = None,
) -> TokenLayout:
    """The layout of a right-padded batch (host tensors).

    Args:
        attention_mask: [B, S], 1 on real tokens, which must form a prefix of every row (right padding).
        labels: [B, S] unshifted labels (`ignore_index` where not supervised), as for HF's loss.
        packed: build the packed layout (else the padded one).
        ignore_index: label of unsupervised positions.
        input_ids: [B, S] token ids, to locate the visual-token slots (with `visual_token_id`).
        visual_token_id: the id of a visual-token slot.
    """
    if attention_mask.shape != labels.shape or attention_mask.dim() != 2:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} and labels {tuple(labels.shape)}: expected [B, S]"
        )
    mask = attention_mask.to("cpu", torch.bool)
    labels = labels.to("cpu")
    batch, width = mask.shape
    lens = mask.sum(1)
    prefix = torch.arange(width).unsqueeze(0) < lens.unsqueeze(1)
    if not torch.equal(prefix, mask):
        raise ValueError("token_layout needs right-padded rows (attention_mask = a prefix of ones in every row)")
    # Position t predicts label t + 1; the last real position (and padding) predicts nothing.
    target = torch.full_like(labels, ignore_index)
    target[:, :-1] = labels[:, 1:]
    predicts = (target != ignore_index) & prefix
    predicts[:, :-1] &= prefix[:, 1:]
    b, t = predicts.nonzero(as_tuple=True)
    targets = target[b, t]
    seq_lens = tuple(int(n) for n in lens)
    has_padding = bool((lens < width).any())
    visual_index = None
    if input_ids is not None and visual_token_id is not None:
        visual_index = (input_ids.to("cpu").reshape(-1) == visual_token_id).nonzero(as_tuple=True)[0]
    if not packed:
        return TokenLayout(False, seq_lens, b * width + t, targets, has_padding, visual_index=visual_index)
    starts = torch.zeros(batch + 1, dtype=torch.int64)
    starts[1:] = lens.cumsum(0)
    token_index = prefix.reshape(-1).nonzero(as_tuple=True)[0]
    positions = torch.cat([torch.arange(n) for n in seq_lens]) if batch else torch.zeros(0, dtype=torch.long)
    return TokenLayout(
        packed=True,
        seq_lens=seq_lens,
        loss_rows=starts[b] + t,
        loss_targets=targets,
        has_padding=has_padding,
        token_index=token_index,
        position_ids=positions.unsqueeze(0),
        cu_seqlens=starts.to(torch.int32),
        visual_index=visual_index,
    )
