"""Checkpoint paths and formats: `ckpt_path=last|auto`, and consolidating sharded FSDP checkpoints.

`python -m dc.training.checkpoint consolidate RUN/checkpoints/last.ckpt OUT.ckpt [--weights-only]` turns the
folder written by `trainer.strategy.state_dict_type=sharded` into one Lightning checkpoint; `--weights-only`
also drops the optimizer state and every weight `load_module` rebuilds from `pretrained` (what a full FSDP
checkpoint holds), giving a small file for evaluation, `stage.init_connector_from` or `python -m dc.training.lora`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def resolve_ckpt_path(value: str | None, checkpoint_dir: str | Path) -> str | None:
    """`ckpt_path` as given: None; "last" (the run's `checkpoints/last.ckpt`, which must exist); "auto" (that
    file when it exists, else a fresh start: for requeued jobs); or a path."""
    if value is None:
        return None
    last = Path(checkpoint_dir) / "last.ckpt"
    if value == "auto":
        if last.exists():
            log.info("ckpt_path=auto: resuming from %s", last)
            return str(last)
        log.info("ckpt_path=auto: no %s yet, starting fresh", last)
        return None
    path = last if value == "last" else Path(value)
    if not path.exists():
        hint = " (pass the old run's folder: hydra.run.dir=<run dir> or paths.output_dir=<run dir>)" if value == "last" else ""
        raise FileNotFoundError(f"ckpt_path={value}: {path} does not exist{hint}")
    return str(path)


def consolidate(folder: str | Path, weights_only: bool = False) -> dict[str, Any]:
    """A sharded (DCP) Lightning/FSDP checkpoint folder as one regular checkpoint dict."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint
    from omegaconf import OmegaConf

    from dc.lit_module import keeps_key

    checkpoint = _format_checkpoint(_load_distributed_checkpoint(Path(folder)))
    if weights_only:
        cfg = OmegaConf.create(checkpoint["hyper_parameters"]["cfg"])
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if keeps_key(cfg, k)}
        for key in ("optimizer_states", "lr_schedulers", "loops", "callbacks"):
            checkpoint.pop(key, None)
    return checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dc.training.checkpoint")
    sub = parser.add_subparsers(dest="command", required=True)
    cons = sub.add_parser("consolidate", help="sharded FSDP checkpoint folder -> one .ckpt file")
    cons.add_argument("folder")
    cons.add_argument("output")
    cons.add_argument("--weights-only", action="store_true", help="keep only the weights a checkpoint must hold")
    args = parser.parse_args(argv)
    checkpoint = consolidate(args.folder, weights_only=args.weights_only)
    out = Path(args.output)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(out)  # never leave a half-written file under the final name
    print(out)


if __name__ == "__main__":
    main()
