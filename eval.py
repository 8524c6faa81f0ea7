"""Evaluate a model: `python eval.py ckpt_path=outputs/<run>/checkpoints/last.ckpt benchmark=gqa`."""

import hydra
from omegaconf import DictConfig

from dc.pipeline import evaluate, optimized_metric


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = evaluate(cfg)
    return optimized_metric(cfg, metrics)  # the value a Hydra sweeper optimises (`optimized_metric=<key>`)


if __name__ == "__main__":
    main()
