"""Shard stream epochs: one pass, a fixed number of batches (cycling), resampling, per-epoch reshuffling."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dc.data.datamodule import LlavaDataModule
from dc.data.stats import DataStatsCallback

from data_helpers import good_records, image_bytes, shard_sample, write_tar


@pytest.fixture
def shard_dir(tmp_path):
    records = good_records(14, 6)
    manifest = {"shards": []}
    for n, chunk in enumerate((records[:7], records[7:12], records[12:])):
        name = f"t-{n:06d}.tar"
        write_tar(
            tmp_path / name,
            [
                shard_sample(r["id"].replace("-", "_"), r, image_bytes(k) if "image" in r else None)
                for k, r in enumerate(chunk)
            ],
        )
        manifest["shards"].append({"name": name, "count": len(chunk)})
    (tmp_path / "index.json").write_text(json.dumps(manifest))
    return tmp_path, records


def loader(shard_dir, tokenizer, template, visual, **kw):
    kw = {"megabatch_factor": 2, **kw}
    dm = LlavaDataModule(
        tokenizer=tokenizer,
        template=template,
        visual=visual,
        format="shards",
        shards=str(shard_dir),
        batch_size=4,
        max_length=128,
        group_by_modality_length=True,
        **kw,
    )
    dm.setup()
    return dm.train_dataloader()


def test_one_pass_sees_every_record_once_and_len_is_an_upper_bound(shard_dir, tokenizer, template, visual):
    root, records = shard_dir
    dl = loader(root, tokenizer, template, visual, num_workers=2)
    batches = list(dl)
    ids = [i for b in batches for i in b["ids"]]
    assert sorted(ids) == sorted(r["id"] for r in records)
    assert len(batches) <= len(dl)


@pytest.mark.parametrize("resampled", [False, True])
def test_fixed_batches_per_epoch(shard_dir, tokenizer, template, visual, resampled):
    root, records = shard_dir
    dl = loader(root, tokenizer, template, visual, num_workers=2, batches_per_epoch=9, resampled=resampled)
    assert len(dl) == 9
    epochs = [[i for b in dl for i in b["ids"]] for _ in range(2)]  # persistent workers: a new epoch each time
    for ids in epochs:
        assert len(ids) == 9 * 4  # 36 > 20 records: the stream cycles (or resamples) to fill the epoch
        assert set(ids) <= {r["id"] for r in records}
    assert epochs[0] != epochs[1]  # reshuffled per epoch


def test_pattern_without_manifest_needs_an_epoch_length_on_several_ranks(shard_dir, tokenizer, template, visual):
    root, _ = shard_dir
    (root / "index.json").unlink()
    dm = LlavaDataModule(
        tokenizer=tokenizer,
        template=template,
        visual=visual,
        format="shards",
        shards=str(root / "t-{000000..000002}.tar"),
        batch_size=4,
    )
    dm.setup()
    with pytest.raises(ValueError, match="batches_per_epoch"):
        dm._stream(rank=0, world=2, epoch=0)
    assert len(list(dm.train_dataloader())) == 5  # one rank: one pass, length unknown up front


@pytest.mark.parametrize(("workers", "fixed"), [(2, 9), (0, None)])
def test_resume_fast_forwards_to_the_same_batches(shard_dir, tokenizer, template, visual, workers, fixed):
    """A loader restored from `state_dict` mid-epoch yields exactly the batches the first run had not reached."""
    root, _ = shard_dir
    kw = {"num_workers": workers, "batches_per_epoch": fixed}
    first = loader(root, tokenizer, template, visual, **kw)
    full = [b["ids"] for b in first]  # epoch 0, uninterrupted
    interrupted = loader(root, tokenizer, template, visual, **kw)
    it = iter(interrupted)
    seen = [next(it)["ids"] for _ in range(3)]
    state = interrupted.state_dict()
    batching = {"batch_size": 4, "max_tokens": None, "group_by_modality_length": True, "megabatch_factor": 2}
    assert state == {"epoch": 0, "batches": 3, "finished": False, "batching": batching}
    with pytest.raises(ValueError, match=r"data.megabatch_factor: 2 -> 4"):  # batches of another composition
        loader(root, tokenizer, template, visual, megabatch_factor=4, **kw).load_state_dict(state)
    resumed = loader(root, tokenizer, template, visual, **kw)
    resumed.load_state_dict(state)
    rest = [b["ids"] for b in resumed]
    assert seen + rest == full
    assert resumed.state_dict()["finished"]
    resumed.load_state_dict(resumed.state_dict())  # a checkpoint at the epoch's end: the next epoch, no skip
    assert resumed.dataset.skip is None and resumed.dataset.epoch == 1


class _Recorder(L.LightningModule):
    """Trains nothing real; records the ids of every batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["ids"])
        return (self.w * batch["input_ids"].shape[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_resume_continues_the_shard_stream(shard_dir, tokenizer, template, visual, tmp_path):
    root, _ = shard_dir

    def fit(
        max_steps: int, ckpt: str | None = None, save: bool = False, stats: DataStatsCallback | None = None
    ) -> list:
        dm = LlavaDataModule(
            tokenizer=tokenizer,
            template=template,
            visual=visual,
            format="shards",
            shards=str(root),
            batch_size=3,
            max_length=128,
            group_by_modality_length=True,
            megabatch_factor=2,
            num_workers=2,
        )
        cb = [ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)] if save else []
        cb += [stats] if stats is not None else []
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=max_steps,
            max_epochs=1,
            logger=False,
            callbacks=cb,
            enable_checkpointing=save,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        module = _Recorder()
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        metrics.update(trainer.callback_metrics)
        return module.seen

    metrics: dict = {}
    stats = DataStatsCallback()
    full = fit(5, stats=stats)
    assert metrics["data/skipped_total"] == 0 and metrics["data/padding_frac_epoch"] == pytest.approx(
        stats.stats.padding_fraction
    )
    assert stats.stats.samples == sum(len(ids) for ids in full)
    first = fit(2, save=True)
    rest = fit(5, ckpt=str(tmp_path / "ckpt" / "last.ckpt"))
    assert len(full) == 5 and len(first) == 2 and first + rest == full


def test_token_budget_on_shards(shard_dir, tokenizer, template, visual):
    """`data.max_tokens` on shards: every micro-batch within the budget on its real padded width, exactly
    `batches_per_epoch` batches, more samples per batch for shorter sequences; no epoch length: refused."""
    root, records = shard_dir
    with pytest.raises(ValueError, match="data.max_tokens with data.format=shards needs data.batches_per_epoch"):
        loader(root, tokenizer, template, visual, max_tokens=128)
    dl = loader(root, tokenizer, template, visual, num_workers=2, batches_per_epoch=10, max_tokens=128)
    batches = list(dl)
    assert len(batches) == len(dl) == 10
    widths = [tuple(b["input_ids"].shape) for b in batches]
    assert all(n * width <= 128 and n <= 4 for n, width in widths), widths
    assert len({n for n, _ in widths}) > 1  # the number of samples adapts to the lengths
    assert {i for b in batches for i in b["ids"]} <= {r["id"] for r in records}
