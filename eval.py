"""Evaluate a checkpoint: `python eval.py ckpt_path=outputs/<run>/checkpoints/last.ckpt`."""

import hydra
from omegaconf import DictConfig

from dc.pipeline import evaluate


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = evaluate(cfg)
    return metrics.get("acc/all")


if __name__ == "__main__":
    main()
