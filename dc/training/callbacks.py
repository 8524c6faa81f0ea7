"""Training callbacks: the step checkpoint that always writes a final `last.ckpt`, RNG state in checkpoints, and
a fault injector for preemption tests.

Throughput/MFU lives in `dc.training.throughput`, sample predictions in `dc.training.predictions`.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar, TQDMProgressBar

log = logging.getLogger(__name__)


def _replace(src: str, dst: str) -> None:
    """Move `src` over `dst` (files: one atomic rename; sharded checkpoint folders: rename the old one aside first)."""
    if os.path.isdir(dst) and not os.path.islink(dst):
        old = dst + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `last.ckpt` is always complete and always the final state.

    * Lightning's `ModelCheckpoint(every_n_train_steps=k)` writes `last.ckpt` only at multiples of k, so a run of
      2,180 steps with k=500 would end with step 2,000 in `last.ckpt`; stage 2 initialises from that file.
    * Lightning writes checkpoints in place: a preemption during the write leaves a truncated `last.ckpt` and no
      previous one. Here every checkpoint is written to `<name>.partial` and renamed when complete.
    * A run that stops at `max_steps` inside an epoch: Lightning counts that epoch as completed before
      `on_train_end`, so its final checkpoint would say "epoch done" while the data position says "k batches into
      it"; a run extended from it (`ckpt_path=last trainer.max_steps=<more>`) would then stop at once at
      `max_epochs` or start the next epoch and skip the rest of this one. The final checkpoint records the epoch
      as unfinished, as a periodic checkpoint taken at the same step does.
    """

    _saving_final_mid_epoch = False

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        partial = filepath + ".partial"
        super()._save_checkpoint(trainer, partial)
        trainer.strategy.barrier("StepCheckpoint.partial")
        if trainer.is_global_zero:
            _replace(partial, filepath)
        trainer.strategy.barrier("StepCheckpoint.renamed")
        self._last_checkpoint_saved = filepath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._saving_final_mid_epoch = not epoch_finished(trainer)
            try:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            finally:
                self._saving_final_mid_epoch = False
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._saving_final_mid_epoch:
            progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
            for counts in (progress["total"], progress["current"]):  # undo Lightning's epoch-end increments
                counts["processed"] -= 1
                counts["completed"] -= 1
            checkpoint["epoch"] -= 1


def epoch_finished(trainer: L.Trainer) -> bool:
    """Whether the current training epoch consumed all its batches (False: stopped inside it by `max_steps`)."""
    batches = trainer.fit_loop.epoch_loop.batch_progress
    total = trainer.num_training_batches
    return batches.is_last_batch or total == float("inf") or batches.current.ready >= total


def collect_rng_states() -> dict[str, Any]:
    """Torch / CUDA / numpy / python RNG states as types `torch.load(weights_only=True)` accepts."""
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    """Inverse of `collect_rng_states` (CUDA states only when CUDA is in use)."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStateCheckpoint(L.Callback):
    """Stores every rank's torch / numpy / python (and CUDA) RNG state in checkpoints and restores it on resume.

    The state is re-applied just before the first training batch after the restore, i.e. at the same point in
    the RNG stream where the uninterrupted run continued after writing the checkpoint (dropout, LoRA dropout).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state = collect_rng_states()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        return {"per_rank": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("per_rank") or []
        rank = (
            torch.distributed.get_rank()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 0
        )
        if len(states) > rank:
            self._pending = states[rank]
        else:
            log.warning(
                "checkpoint holds RNG states for %d ranks, this is rank %d: RNG not restored", len(states), rank
            )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            state, self._pending = self._pending, None
            set_rng_states(state)


class CrashAtStep(L.Callback):
    """Fault injection for resume tests: kill this process at the start of the first batch after `step`.

    ModelCheckpoint runs after all other callbacks in `on_train_batch_end`, so a checkpoint due at `step` has
    been written by the time this fires. `sig` is a signal name ("SIGKILL": no clean-up at all) or "raise".
    """

    def __init__(self, step: int, sig: str = "SIGKILL") -> None:
        self.step = step
        self.sig = sig

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step < self.step:
            return
        if self.sig == "raise":
            raise RuntimeError(f"CrashAtStep: simulated failure at global step {trainer.global_step}")
        log.warning("CrashAtStep: sending %s at global step %d", self.sig, trainer.global_step)
        os.kill(os.getpid(), getattr(signal, self.sig))


class ProgressLog(L.Callback):
    """One log line every `every_n_steps` optimizer steps: step, share done, loss, elapsed and estimated time left.

    For runs without a progress bar (`trainer.enable_progress_bar=false`, SLURM logs, `make demo`), so a long run is
    never silent for minutes. Does nothing when the progress bar is on.
    """

    def __init__(self, every_n_steps: int = 25) -> None:
        self.every = max(1, int(every_n_steps))
        self._start = 0.0
        self._first_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        self._start = time.perf_counter()
        self._first_step = trainer.global_step
        if not trainer.progress_bar_callback and trainer.is_global_zero:
            log.info(
                "training: %s optimizer steps; checkpoints in %s",
                self._total(trainer) or "?",
                getattr(trainer.checkpoint_callback, "dirpath", None),
            )

    @staticmethod
    def _total(trainer: L.Trainer) -> int | None:
        total = getattr(trainer.lightning_module, "total_steps", None)
        return int(total) if total else None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        import time

        step = trainer.global_step
        if trainer.progress_bar_callback or not trainer.is_global_zero or step == 0 or step % self.every:
            return
        if getattr(self, "_last", None) == step:
            return
        self._last = step
        elapsed = time.perf_counter() - self._start
        total = self._total(trainer)
        done = step - self._first_step
        left = elapsed / done * (total - step) if total and done else None
        loss = trainer.callback_metrics.get("train/loss")
        log.info(
            "step %d/%s%s, loss %s, %.0f s elapsed%s",
            step,
            total or "?",
            f" ({100 * step / total:.0f} %)" if total else "",
            f"{float(loss):.4f}" if loss is not None else "?",
            elapsed,
            f", ~{left:.0f} s left" if left is not None else "",
        )


class _LossOnBar:
    """Mixin for a Lightning progress bar: shows `train/loss` as a host float, read every
    `trainer.log_every_n_steps` optimizer steps (and at the first), when the loggers read it anyway.

    `self.log(..., prog_bar=True)` would do the same through Lightning, which converts every progress-bar metric to
    a Python float after every batch — a device sync per micro-batch, leaving the GPU idle while the host prepares
    the next batch.
    """

    _loss: float | None = None
    _loss_step: int = -1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step != self._loss_step and (step <= 1 or step % max(1, int(trainer.log_every_n_steps)) == 0):
            value = trainer.callback_metrics.get("train/loss")
            if value is not None:
                self._loss, self._loss_step = float(value), step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # type: ignore[misc]

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        if self._loss is not None:
            items["loss"] = self._loss
        return items


class LossBarRich(_LossOnBar, RichProgressBar):
    """Lightning's Rich progress bar with the loss shown sync-free (see `_LossOnBar`)."""


class LossBarTQDM(_LossOnBar, TQDMProgressBar):
    """Lightning's tqdm progress bar with the loss shown sync-free (see `_LossOnBar`)."""


def loss_progress_bar(callbacks: list[Any]) -> ProgressBar | None:
    """The bar `train` adds when `trainer.enable_progress_bar` is on: Rich when installed (Lightning's own choice),
    else tqdm; None when the callbacks already hold a progress bar (the user's wins).
    """
    if any(isinstance(cb, ProgressBar) for cb in callbacks):
        return None
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    return LossBarRich() if _RICH_AVAILABLE else LossBarTQDM()
