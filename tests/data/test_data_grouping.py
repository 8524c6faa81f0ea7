"""Grouped batching: single-modality batches (except the documented leftover), equal batch counts per rank,
every index once per epoch, and less padding than plain random batches on a mixed-length set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dc.data.collate import Collator
from dc.data.datamodule import LlavaDataModule
from dc.data.grouping import GroupedBatchSampler, group_stream

from data_helpers import good_records, write_layout


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
    n_leftover = sum(has_image) % step + sum(~has_image) % step
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
        samples.append(
            {"input_ids": [1] * int(rng.integers(5, 400)), "pixel_values": torch.zeros(n_img, 3, 2, 2), "k": k}
        )
    batches = list(group_stream(iter(samples), 8, megabatch_factor=4, rng=np.random.default_rng(1)))
    assert sorted(s["k"] for b in batches for s in b) == list(range(203))
    mixed = [b for b in batches if len({s["pixel_values"].shape[0] for s in b}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] is batches[-1] or mixed[0] is batches[-2])
    assert sum(len(b) < 8 for b in batches) <= 1

    def pad(bs):
        return sum(max(len(s["input_ids"]) for s in b) * len(b) - sum(len(s["input_ids"]) for s in b) for b in bs)

    plain = list(group_stream(iter(samples), 8, group=False))
    assert pad(batches) < 0.5 * pad(plain)


@pytest.mark.parametrize("group", [True, False])
def test_group_stream_token_budget(group):
    """Every batch holds n samples with n × longest ≤ budget and n ≤ batch_size; each sample once; the grouped
    stream's batches (but the last) are single-modality and full: one more sample would break a limit."""
    rng = np.random.default_rng(3)
    samples = [
        {
            "input_ids": [1] * int(rng.integers(5, 400)),
            "pixel_values": torch.zeros(int(rng.random() < 0.6), 3, 2, 2),
            "k": k,
        }
        for k in range(301)
    ]
    budget, most = 1024, 16
    batches = list(group_stream(iter(samples), most, group=group, megabatch_factor=4, rng=rng, max_tokens=budget))
    assert sorted(s["k"] for b in batches for s in b) == list(range(301))
    for b in batches:
        assert len(b) <= most and len(b) * max(len(s["input_ids"]) for s in b) <= budget
    assert len({len(b) for b in batches}) > 3  # the batch size follows the lengths
    if group:
        mixed = [b for b in batches[:-2] if len({s["pixel_values"].shape[0] for s in b}) > 1]
        assert not mixed
        longest = [max(len(s["input_ids"]) for s in b) for b in batches[:-2]]
        not_full = [b for b, m in zip(batches[:-2], longest) if len(b) < min(most, budget // m)]
        assert len(not_full) <= 2  # at most one short remainder per modality, emitted at the end


def test_datamodule_batches_are_single_modality_with_real_padding(tmp_path, tokenizer, template, visual):
    """End to end on a tokenised mix: the collate's padding counts agree with the mask, grouped < plain."""
    records = good_records(40, 24)
    path, folder = write_layout(tmp_path, records)
    stats = {}
    for group in (True, False):
        dm = LlavaDataModule(
            train_file=str(path),
            image_folder=str(folder),
            tokenizer=tokenizer,
            template=template,
            visual=visual,
            batch_size=8,
            group_by_modality_length=group,
            megabatch_factor=4,
        )
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
    samples = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "pixel_values": torch.zeros(1, 3, 2, 2), "truncated": True},
        {"input_ids": [5], "labels": [5], "pixel_values": torch.zeros(0, 3, 2, 2)},
    ]
    b = c(samples)
    assert b["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert (b["num_tokens"], b["num_padding"], b["truncated"], b["skipped"]) == (4, 2, 1, {})
    assert b["pixel_values"].shape == (1, 3, 2, 2)
    assert c([samples[1]])["pixel_values"] is None  # text-only batch


# --- token budgets ----------------------------------------------------------------------------------------------
def test_budget_cuts_by_hand():
    from dc.data.grouping import budget_cuts

    lengths = np.array([900, 500, 400, 400, 100, 90, 80, 10])
    # 1000 tokens: 900 alone; 500+400 (2 x 500); 400+100 (2 x 400); then 100, 90, 80, 10 would fit 10 x 100
    # but at most 3 samples per batch
    assert budget_cuts(lengths, 1000, 3) == [(0, 1), (1, 3), (3, 5), (5, 8)]
    assert budget_cuts(np.array([1500, 20]), 1000, 8) == [(0, 1), (1, 2)]  # too long for the budget: alone


@pytest.mark.parametrize("world", [1, 2])
def test_token_budget_batches_bound_tokens_and_keep_a_fixed_count(world):
    lengths, has_image = mixed_lengths()
    budget, most = 4096, 16
    samplers = [
        GroupedBatchSampler(lengths, has_image, most, num_replicas=world, rank=r, seed=5, max_tokens=budget)
        for r in range(world)
    ]
    epochs = []
    for epoch in (0, 1):
        per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            per_rank.append(list(s))
        assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])  # equal, as __len__
        for batches in per_rank:
            for b in batches:
                assert len(b) <= most and (len(b) == 1 or len(b) * lengths[b].max() <= budget)
                assert len(set(has_image[b].tolist())) == 1  # single modality
        seen = [i for batches in per_rank for b in batches for i in b]
        assert set(seen) == set(range(len(lengths)))  # every sample (repeats only to pad the last step)
        epochs.append(per_rank[0])
    assert epochs[0] != epochs[1]  # order reshuffled per epoch
    assert sorted(map(tuple, epochs[0])) == sorted(map(tuple, epochs[1]))  # same partition (fixed count)
    short = [b for b in epochs[0] if lengths[b].max() < 200]
    assert short and max(len(b) for b in short) == most  # short samples travel many to a batch


def test_datamodule_token_budget(tmp_path, tokenizer, template, visual):
    records = good_records(40, 24)
    path, folder = write_layout(tmp_path, records)
    common = dict(train_file=str(path), image_folder=str(folder), tokenizer=tokenizer, template=template, visual=visual)
    dm = LlavaDataModule(**common, batch_size=8, max_tokens=2048, max_length=512, group_by_modality_length=True)
    dm.setup()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == dm.train_batches()
    assert sum(len(b["ids"]) for b in batches) >= 64
    store = dm.train_set.records
    estimate = dict(zip((store[i]["id"] for i in range(len(store))), store.estimated_lengths(dm.visual_tokens(store))))
    multi = [b["ids"] for b in batches if len(b["ids"]) > 1]
    assert multi and all(len(ids) * max(estimate[i] for i in ids) <= 2048 for ids in multi)
    with pytest.raises(ValueError, match="data.max_tokens=100 must be an integer >= data.max_length=512"):
        LlavaDataModule(**common, max_tokens=100, max_length=512)
    with pytest.raises(
        ValueError, match="data.format=shards needs data.batches_per_epoch"
    ):  # tests/data/test_data_shards.py
        LlavaDataModule(
            tokenizer=tokenizer, template=template, visual=visual, format="shards", shards="x", max_tokens=4096
        )
