"""Running data statistics from the batches themselves (skips, truncations, padding), for logging.

DataLoader workers are separate processes, so counters kept in a dataset object never reach the trainer;
instead every batch carries its own (`dc.data.collate`): `skipped` ({reason: count}), `truncated`,
`num_tokens`, `num_padding`. `DataStats` adds them up on the consumer side; `DataStatsCallback` logs them
from any LightningModule without changes to it; `log_data_stats` does the same from inside `training_step`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)

BATCH_KEYS = ("skipped", "truncated", "num_tokens", "num_padding")
"""Batch entries that are statistics, not model inputs."""


class DataStats:
    """Totals over the batches seen by this process (one rank)."""

    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self.truncated = 0
        self.tokens = 0
        self.padding = 0
        self.samples = 0

    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        """Add one batch; return its own padding fraction as `{"data/padding_frac": ...}`."""
        self.skipped.update(batch.get("skipped") or {})
        self.truncated += int(batch.get("truncated", 0))
        tokens, padding = int(batch.get("num_tokens", 0)), int(batch.get("num_padding", 0))
        self.tokens += tokens
        self.padding += padding
        self.samples += int(batch["input_ids"].shape[0]) if "input_ids" in batch else 0
        return {"data/padding_frac": padding / max(1, tokens + padding)}

    @property
    def padding_fraction(self) -> float:
        """Padding positions / all positions, over every batch so far."""
        return self.padding / max(1, self.tokens + self.padding)

    def totals(self) -> dict[str, float]:
        """Cumulative counts: `data/skipped/<reason>`, `data/skipped_total`, `data/truncated_total`."""
        out = {f"data/skipped/{reason}": float(n) for reason, n in sorted(self.skipped.items())}
        out["data/skipped_total"] = float(sum(self.skipped.values()))
        out["data/truncated_total"] = float(self.truncated)
        return out

    def summary(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items())) or "none"
        return (
            f"{self.samples} samples, skipped {sum(self.skipped.values())} ({reasons}), truncated {self.truncated}, "
            f"padding {100 * self.padding_fraction:.1f} %"
        )


def host_tensors(metrics: dict[str, float]) -> dict[str, torch.Tensor]:
    """Host-side values as CPU tensors for `self.log`: Lightning turns a Python number into a tensor on the module's
    device, and a blocking host-to-GPU copy waits for all queued GPU work (a sync per step); a CPU tensor stays on
    the CPU until a logger reads it.
    """
    return {k: torch.tensor(float(v), dtype=torch.float32) for k, v in metrics.items()}


def log_data_stats(module: L.LightningModule, batch: dict[str, Any], stats: DataStats) -> None:
    """Log the batch's padding fraction and the cumulative skip/truncation counts (summed over ranks).

    Call once per training batch, e.g. at the top of `training_step`. `data/skipped_total` is reduced over ranks
    at every step (one scalar); per-reason totals over ranks come from `DataStatsCallback` at epoch end.
    """
    bs = int(batch["input_ids"].shape[0])
    module.log_dict(host_tensors(stats.update(batch)), on_step=True, on_epoch=True, batch_size=bs)
    module.log(
        "data/skipped_total",
        float(sum(stats.skipped.values())),
        on_step=True,
        on_epoch=False,
        reduce_fx="sum",
        sync_dist=True,
        batch_size=bs,
    )


def all_reduce_counts(counts: Counter, device: torch.device | None = None) -> Counter:
    """Sum a {reason: n} counter over ranks (identity when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return Counter(counts)
    names: list[list[str]] = [None] * torch.distributed.get_world_size()  # type: ignore[list-item]
    torch.distributed.all_gather_object(names, sorted(counts))
    keys = sorted({k for ks in names for k in ks})
    t = torch.tensor([float(counts.get(k, 0)) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return Counter({k: int(v) for k, v in zip(keys, t.tolist(), strict=True) if v})


class DataStatsCallback(L.Callback):
    """Logs `data/padding_frac` per step (this rank) and, at each epoch end, over all ranks: the epoch's
    `data/padding_frac_epoch` and the run's `data/skipped/<reason>`, `data/skipped_total`, `data/truncated_total`.

    Add to `callbacks` (e.g. `configs/callbacks/default.yaml`: `data_stats: {_target_: dc.data.stats.DataStatsCallback}`).
    Only one all-reduce per epoch: nothing is synchronised per step.
    """

    def __init__(self) -> None:
        self.stats = DataStats()
        self._epoch_start = (0, 0)  # (tokens, padding) totals when the epoch began

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = (self.stats.tokens, self.stats.padding)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(batch, dict) and "input_ids" in batch:
            metrics = host_tensors(self.stats.update(batch))
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=int(batch["input_ids"].shape[0]))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device if pl_module.device.type != "cpu" else None  # NCCL reduces on the GPU
        tokens, padding = self.stats.tokens - self._epoch_start[0], self.stats.padding - self._epoch_start[1]
        local = Counter({f"skipped:{r}": n for r, n in self.stats.skipped.items()})
        local.update({"truncated": self.stats.truncated, "tokens": tokens, "padding": padding})
        total = all_reduce_counts(local, device)
        metrics = {
            f"data/skipped/{k.split(':', 1)[1]}": float(n) for k, n in sorted(total.items()) if k.startswith("skipped:")
        }
        metrics["data/skipped_total"] = float(sum(n for k, n in total.items() if k.startswith("skipped:")))
        metrics["data/truncated_total"] = float(total["truncated"])
        metrics["data/padding_frac_epoch"] = total["padding"] / max(1, total["tokens"] + total["padding"])
        for name, value in metrics.items():
            pl_module.log(name, value, rank_zero_only=True)
        if trainer.is_global_zero:
            log.info(
                "data (all ranks): skipped %s, truncated %d, padding %.1f %% this epoch",
                {k: v for k, v in metrics.items() if k.startswith("data/skipped/")} or "none",
                total["truncated"],
                100 * metrics["data/padding_frac_epoch"],
            )
