"""Exact mid-epoch resume for map-style data: the loader checkpoints its position and skips what was consumed.

`ResumableDataModule` wraps any `LightningDataModule` and rebuilds its map-style train loader around a
`SkipSampler`, which wraps the loader's epoch-seeded sampler (the data layer's `GroupedBatchSampler`, any
`DistributedSampler`; a plain `RandomSampler` is replaced by a seeded `DistributedSampler`). The order depends only
on `(seed, epoch)`; `ResumableDataLoader.state_dict()` records the epoch and the number of batches handed to the
training loop, Lightning stores it in the checkpoint (`loops.fit_loop.state_dict.combined_loader`) and gives it
back before iterating on resume, and the sampler then skips exactly the batches already trained on. Lightning
does not prefetch from sized loaders, so "handed out" equals "trained on" when a checkpoint is written.

Iterable datasets (`data.format=shards`) pass through unchanged: a resumed run restarts that epoch's stream.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import lightning as L
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from dc.data.grouping import check_batching
from dc.utils.errors import ConfigError

log = logging.getLogger(__name__)


class SkipSampler(DistributedSampler):
    """Wraps an epoch-seeded sampler and can start an epoch part-way through (`skip_in_epoch`, applied once).

    The inner sampler's order must depend only on `(seed, epoch)` (`DistributedSampler`, the data layer's
    `GroupedBatchSampler`); it does its own rank split. Subclassing `DistributedSampler` keeps Lightning from
    injecting another sampler under DDP/FSDP; Lightning's `set_epoch` calls are forwarded.
    """

    def __init__(self, inner: Sampler) -> None:
        super().__init__(
            range(len(inner)),
            num_replicas=getattr(inner, "num_replicas", 1),
            rank=getattr(inner, "rank", 0),
            shuffle=False,
        )
        self.inner = inner
        self.epoch = int(getattr(inner, "epoch", 0))
        self._skip = 0
        self._skip_epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def skip_in_epoch(self, epoch: int, items: int) -> None:
        """Drop the first `items` sampler items of `epoch` the next time that epoch is iterated."""
        self._skip, self._skip_epoch = items, epoch

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        skip = self._skip if self.epoch == self._skip_epoch else 0
        self._skip, self._skip_epoch = 0, -1
        return itertools.islice(iter(self.inner), skip, None)


class ResumableDataLoader(DataLoader):
    """A `DataLoader` over a `SkipSampler` whose `state_dict` is its position in the current epoch.

    `__len__` stays the full epoch length (Lightning counts the restored batches towards it); a resumed epoch
    yields only the batches not yet consumed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, SkipSampler):
            raise TypeError("ResumableDataLoader needs a SkipSampler")
        self._epoch = 0
        self._yielded = 0

    @property
    def _items_per_batch(self) -> int:
        return 1 if self.batch_size is None else int(self.batch_size)  # batch_size=None: the sampler yields batches

    @property
    def _batching(self) -> dict[str, Any] | None:
        """A batch sampler's batching settings (`GroupedBatchSampler.batching`), None when it has none."""
        describe = getattr(self.sampler.inner, "batching", None)  # type: ignore[attr-defined]
        return describe() if self.batch_size is None and callable(describe) else None

    def __iter__(self) -> Iterator[Any]:  # a generator: the sampler is read at the first batch, after set_epoch
        sampler: SkipSampler = self.sampler  # type: ignore[assignment]
        if sampler.epoch != self._epoch or sampler._skip_epoch != sampler.epoch:
            self._epoch, self._yielded = sampler.epoch, 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "epoch": self._epoch,
            "batches": self._yielded,
            "items_per_batch": self._items_per_batch,
            "world_size": int(self.sampler.num_replicas),
        }
        if self._batching is not None:
            state["batching"] = self._batching
        return state

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: SkipSampler = self.sampler  # type: ignore[assignment]
        if int(state["items_per_batch"]) != self._items_per_batch:
            raise ConfigError(
                f"cannot resume the data position: the checkpoint's loader took {state['items_per_batch']} sampler "
                f"items per batch, this one {self._items_per_batch} (was data.batch_size changed?)"
            )
        check_batching(state.get("batching"), self._batching)
        if int(state.get("world_size", sampler.num_replicas)) != sampler.num_replicas:
            raise ConfigError(
                f"cannot resume the data position: the checkpoint was written with {state['world_size']} ranks, this "
                f"run has {sampler.num_replicas} (each rank's share of an epoch depends on the world size); resume "
                "on the same number of devices"
            )
        epoch, batches = int(state["epoch"]), int(state["batches"])
        sampler.set_epoch(epoch)
        sampler.skip_in_epoch(epoch, batches * self._items_per_batch)
        self._epoch, self._yielded = epoch, batches
        log.info("data position restored: epoch %d, %d batches already consumed", epoch, batches)


def resumable_loader(loader: DataLoader, *, seed: int, num_replicas: int, rank: int) -> DataLoader:
    """`loader` rebuilt around a `SkipSampler` (same dataset, batching, collate, workers).

    An epoch-seeded sampler (any `DistributedSampler`) is kept; PyTorch's `RandomSampler`/`SequentialSampler`
    are replaced by a `DistributedSampler(seed=seed)` (the order must not depend on the global RNG).
    Iterable datasets and custom batch samplers are returned unchanged (a warning says so).
    """
    if isinstance(loader, ResumableDataLoader):
        return loader
    if isinstance(loader.dataset, IterableDataset):
        log.warning("train loader streams an IterableDataset: resuming restarts the epoch's stream (not exact)")
        return loader
    automatic = loader.batch_size is not None
    if automatic and type(loader.batch_sampler) is not BatchSampler:
        log.warning("train loader uses a custom batch_sampler: resuming restarts the epoch (not exact)")
        return loader
    inner = loader.sampler
    if isinstance(inner, (RandomSampler, SequentialSampler)):
        inner = DistributedSampler(
            loader.dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=isinstance(inner, RandomSampler),
            seed=seed,
            drop_last=False,
        )
    elif not isinstance(inner, DistributedSampler):
        log.warning(
            "train sampler %s is not epoch-seeded: resuming restarts the epoch (not exact)", type(inner).__name__
        )
        return loader
    kwargs: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "persistent_workers": loader.persistent_workers,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if automatic:
        kwargs.update(batch_size=loader.batch_size, drop_last=loader.drop_last)
    else:
        kwargs.update(batch_size=None)
    return ResumableDataLoader(loader.dataset, sampler=SkipSampler(inner), **kwargs)


class ResumableDataModule(L.LightningDataModule):
    """Wraps a datamodule so its train loader resumes exactly; everything else is delegated to it.

    Args:
        inner: the datamodule built from the `data` config.
        seed: the run seed (`cfg.seed`); the sampler permutation is `perm(seed + epoch)`.
    """

    def __init__(self, inner: L.LightningDataModule, seed: int) -> None:
        super().__init__()
        self.inner = inner
        self.seed = seed
        self.prepare_data_per_node = inner.prepare_data_per_node

    def __getattr__(self, name: str) -> Any:
        """Anything else (`train_set`, `tokenizer`, ...) is the wrapped datamodule's, so `trainer.datamodule.x` works."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def setup(self, stage: str) -> None:
        self.inner.trainer = self.trainer
        self.inner.setup(stage)

    def teardown(self, stage: str) -> None:
        self.inner.teardown(stage)

    def train_dataloader(self) -> Any:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        return resumable_loader(self.inner.train_dataloader(), seed=self.seed, num_replicas=world, rank=rank)

    def val_dataloader(self) -> Any:
        return self.inner.val_dataloader()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)
