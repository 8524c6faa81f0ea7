"""A wandb table of greedy predictions on a few fixed training samples, with their images, every N steps.

Generation runs on every rank (under FSDP each forward is collective; the whole model is gathered with
`summon_full_params`, so keep it off for models that do not fit on one device: `~callbacks.predictions`);
rank 0 logs the table. Without a `WandbLogger` the callback does nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from dc.eval.generate import generate_texts, prompt_sample
from dc.models.llms.templates import ChatTemplate

log = logging.getLogger(__name__)

COLUMNS = ["step", "id", "image", "prompt", "prediction", "reference"]


def _train_dataset(trainer: L.Trainer) -> Any:
    return getattr(trainer.datamodule, "train_set", None)


def pick_samples(dataset: Any, n: int) -> list[dict[str, Any]]:
    """The first `n` loadable single-image records: index, id, first question, its reference answer, image path and
    the image as the dataset preprocesses it.
    """
    picked: list[dict[str, Any]] = []
    records = getattr(dataset, "records", None)
    for index in range(len(records) if records is not None else 0):
        try:
            record = records[index]
        except Exception:  # noqa: BLE001 - an unparsable record is the data layer's to report; pick another
            continue
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(record.get("image"), str) or not turns or len(turns) < 2:
            continue
        item = dataset[index]
        if not isinstance(item, dict):  # a record the dataset skips (unreadable image, ...)
            continue
        picked.append(
            {
                "pixel_values": item["pixel_values"],
                "visual": item["visual"],
                "index": index,
                "id": record.get("id"),
                "prompt": turns[0]["value"],
                "reference": turns[1]["value"],
                "image": Path(dataset.image_folder) / record["image"],
            }
        )
        if len(picked) == n:
            break
    return picked


@torch.no_grad()
def predict(vlm: Any, samples: list[dict[str, Any]], template: ChatTemplate | None, max_new_tokens: int) -> list[str]:
    """Greedy answers for `samples` (from `pick_samples`), prompted with `template` (None: the LLM's own)."""
    inputs = [prompt_sample(vlm, s["prompt"], [(s["pixel_values"], s["visual"][0])], template) for s in samples]
    return generate_texts(vlm, inputs, batch_size=len(inputs), max_new_tokens=max_new_tokens)


class WandbPredictionTable(L.Callback):
    """Every `every_n_steps` optimizer steps, log `samples/predictions` (columns `COLUMNS`) to wandb."""

    def __init__(self, every_n_steps: int = 500, num_samples: int = 4, max_new_tokens: int = 32) -> None:
        self.every = max(1, int(every_n_steps))
        self.num_samples = num_samples
        self.max_new_tokens = max_new_tokens
        self._last_step = -1

    @staticmethod
    def _wandb(trainer: L.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        logger = self._wandb(trainer)
        step = trainer.global_step
        if logger is None or step == 0 or step % self.every or step == self._last_step:
            return
        self._last_step = step
        dataset = _train_dataset(trainer)
        samples = pick_samples(dataset, self.num_samples)
        if not samples:
            return
        template = getattr(pl_module, "stage_template", None)
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if isinstance(trainer.model, FSDP):
            with FSDP.summon_full_params(trainer.model, writeback=False):
                answers = predict(pl_module.vlm, samples, template, self.max_new_tokens)
        else:
            answers = predict(pl_module.vlm, samples, template, self.max_new_tokens)
        if trainer.is_global_zero:
            import wandb

            rows = [
                [step, s["id"], wandb.Image(str(s["image"])), s["prompt"], a, s["reference"]]
                for s, a in zip(samples, answers)
            ]
            logger.log_table(key="samples/predictions", columns=COLUMNS, data=rows, step=step)
