"""Evaluate a model: `python eval.py ckpt_path=outputs/<run>/checkpoints/last.ckpt benchmark=gqa`."""

import sys

import hydra
from omegaconf import DictConfig

from dc.pipeline import evaluate, optimized_metric, user_errors


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = evaluate(cfg)
    except user_errors() as err:  # the message names the key and the fix: no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    return optimized_metric(cfg, metrics)  # the value a Hydra sweeper optimises (`optimized_metric=<key>`)


if __name__ == "__main__":
    main()
