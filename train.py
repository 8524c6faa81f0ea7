"""Train a Dense Connector VLM: `python train.py connector=dci encoder=siglip llm=vicuna7b stage=finetune`."""

import hydra
from omegaconf import DictConfig

from dc.pipeline import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    return metrics.get("train/loss")  # the value a Hydra sweeper optimises


if __name__ == "__main__":
    main()
