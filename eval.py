"""Evaluate a model: `python eval.py ckpt_path=outputs/<run>/checkpoints/last.ckpt benchmark=gqa`."""

import hydra
from omegaconf import DictConfig

from dc.pipeline import evaluate, optimized_metric, user_errors
from dc.utils.cli import errors_as_messages


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    with errors_as_messages(user_errors()):  # the message names the key and the fix: no traceback
        metrics, _ = evaluate(cfg)
        return optimized_metric(cfg, metrics)  # the value a Hydra sweeper optimises (`optimized_metric=<key>`)


if __name__ == "__main__":
    main()
