"""`train/grad_norm`: the global L2 norm of all gradients, logged every optimizer step before clipping (checked
against the norm a callback computes by hand from the same gradients)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger

from dc.pipeline import build_datamodule, build_tokenizer

from dc_testing import make_module
from train_helpers import single_thread  # noqa: F401


class HandNorm(L.Callback):
    """sqrt(Σ g²) over every parameter gradient, in float64 (callbacks run before the module's hook)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        total = sum(float(p.grad.double().pow(2).sum()) for p in pl_module.parameters() if p.grad is not None)
        self.norms.append(math.sqrt(total))


def test_grad_norm_is_logged_before_clipping(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg("stage=pretrain")
    tokenizer = build_tokenizer(cfg)
    hand = HandNorm()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=CSVLogger(tmp_path, name="csv", version=""),
        callbacks=[hand],
        log_every_n_steps=1,
        gradient_clip_val=1e-6,  # a logged value after clipping would be ~1e-6
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    module = make_module(cfg, tokenizer=tokenizer, total_steps=3)
    trainer.fit(module, datamodule=build_datamodule(cfg, tokenizer))
    with open(tmp_path / "csv" / "metrics.csv") as f:
        logged = [float(r["train/grad_norm"]) for r in csv.DictReader(f) if r.get("train/grad_norm")]
    assert len(hand.norms) == 3 and hand.norms[0] > 1e-3
    assert logged == pytest.approx(hand.norms, rel=1e-5)
