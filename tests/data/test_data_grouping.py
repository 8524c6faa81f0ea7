"""Grouped batching: single-modality batches (except the documented leftover), equal batch counts per rank,
every index once per epoch, and less padding than plain random batches on a mixed-length set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import NUM_VISUAL_TOKENS, good_records, write_layout

from dc.data.collate import Collator
from dc.data.datamodule import LlavaDataModule
from dc.data.grouping import GroupedBatchSampler, group_stream


def mixed_lengths(n_img: int = 300, n_txt: int = 170, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = rng.integers(600, 1100, n_img)  # 576 visual tokens + text
    txt = rng.integers(20, 900, n_txt)
    has_image = np.r_[np.ones(n_img, bool), np.zeros(n_txt, bool)]
    order = rng.permutation(n_img + n_txt)
    return np.r_[img, txt][order], has_image[order]


def padding_fraction(batches: list[list[int]], lengths: np.ndarray) -> float:
    pad = total = 0
    for b in batches:
        longest = lengths[b].max()
        pad += int((longest - lengths[b]).sum())
        total += longest * len(b)
    return pad / total


@pytest.mark.parametrize("world", [1, 3])
def test_batches_single_modality_except_leftover_and_equal_per_rank(world):
    lengths, has_image = mixed_lengths()
    bs = 8
    per_rank = []
    for rank in range(world):
        s = GroupedBatchSampler(lengths, has_image, bs, num_replicas=world, rank=rank, megabatch_factor=4, seed=3)
        s.set_epoch(1)
        per_rank.append(list(s))
        assert len(per_rank[-1]) == len(s)
    assert len({len(b) for b in per_rank}) == 1  # the same number of batches on every rank
    step = world * bs
    n_leftover = (sum(has_image) % step + sum(~has_image) % step)
    mixed_allowed = -(-n_leftover // step)  # leftover steps, all at the end
    n_steps = len(per_rank[0])
    for k in range(n_steps):
        mods = {bool(m) for r in range(world) for m in has_image[per_rank[r][k]]}
        if k < n_steps - mixed_allowed:
            assert len(mods) == 1, f"step {k} mixes modalities"
            assert all(len(per_rank[r][k]) == bs for r in range(world))
    seen = np.concatenate([np.concatenate(b) for b in per_rank])
    assert set(seen.tolist()) == set(range(len(lengths)))  # every index this epoch
    assert len(seen) - len(lengths) < world  # padding of the last step only


def test_grouping_lowers_padding_and_epochs_differ():
    lengths, has_image = mixed_lengths()
    grouped = GroupedBatchSampler(lengths, has_image, 8, megabatch_factor=8, seed=0)
    plain = GroupedBatchSampler(lengths, has_image, 8, group=False, seed=0)
    pg, pp = padding_fraction(list(grouped), lengths), padding_fraction(list(plain), lengths)
    assert pg < 0.10 < pp
    first = list(grouped)
    grouped.set_epoch(1)
    assert list(grouped) != first


def test_group_stream_single_modality_and_one_mixed_leftover():
    rng = np.random.default_rng(0)
    samples = []
    for k in range(203):
        n_img = int(rng.random() < 0.6)
        samples.append({"input_ids": [1] * int(rng.integers(5, 400)), "pixel_values": torch.zeros(n_img, 3, 2, 2), "k": k})
    batches = list(group_stream(iter(samples), 8, megabatch_factor=4, rng=np.random.default_rng(1)))
    assert sorted(s["k"] for b in batches for s in b) == list(range(203))
    mixed = [b for b in batches if len({s["pixel_values"].shape[0] for s in b}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] is batches[-1] or mixed[0] is batches[-2])
    assert sum(len(b) < 8 for b in batches) <= 1

    def pad(bs):
        return sum(max(len(s["input_ids"]) for s in b) * len(b) - sum(len(s["input_ids"]) for s in b) for b in bs)

    plain = list(group_stream(iter(samples), 8, group=False))
    assert pad(batches) < 0.5 * pad(plain)


def test_datamodule_batches_are_single_modality_with_real_padding(tmp_path, tokenizer, template, visual):
    """End to end on a tokenised mix: the collate's padding counts agree with the mask, grouped < plain."""
    records = good_records(40, 24)
    path, folder = write_layout(tmp_path, records)
    stats = {}
    for group in (True, False):
        dm = LlavaDataModule(train_file=str(path), image_folder=str(folder), tokenizer=tokenizer, template=template,
                             visual=visual, batch_size=8,
                             group_by_modality_length=group, megabatch_factor=4)
        dm.setup()
        pad = tot = 0
        for batch in dm.train_dataloader():
            mask = batch["attention_mask"]
            assert batch["num_tokens"] == int(mask.sum()) and batch["num_padding"] == int((mask == 0).sum())
            n_img = 0 if batch["pixel_values"] is None else batch["pixel_values"].shape[0]
            if group and len(batch["ids"]) == 8:
                assert n_img in (0, 8)
            pad += batch["num_padding"]
            tot += mask.numel()
        stats[group] = pad / tot
    assert stats[True] < stats[False]


def test_collator_pads_and_counts():
    c = Collator(pad_token_id=0)
    samples = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "pixel_values": torch.zeros(1, 3, 2, 2), "truncated": True},
               {"input_ids": [5], "labels": [5], "pixel_values": torch.zeros(0, 3, 2, 2)}]
    b = c(samples)
    assert b["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert (b["num_tokens"], b["num_padding"], b["truncated"], b["skipped"]) == (4, 2, 1, {})
    assert b["pixel_values"].shape == (1, 3, 2, 2)
    assert c([samples[1]])["pixel_values"] is None  # text-only batch
