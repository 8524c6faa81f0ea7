"""`python -m dc.export.consolidate RUN/checkpoints/last.ckpt OUT.ckpt [--weights-only]`.

Turns the folder written by `trainer.strategy.state_dict_type=sharded` (FSDP) into one Lightning checkpoint;
`--weights-only` also drops the optimizer state and every weight `load_vlm` rebuilds from `pretrained` (what a
full FSDP checkpoint holds), giving a small file for evaluation, `stage.init_connector_from` or export.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from dc.export.errors import export_user_errors
from dc.training.checkpoint import checkpoint_config, keeps_key
from dc.utils.cli import errors_as_messages


def consolidate(folder: str | Path, weights_only: bool = False) -> dict[str, Any]:
    """A sharded (DCP) Lightning/FSDP checkpoint folder as one regular checkpoint dict.

    Both layouts: FSDP1's (`model`, `optimizer_0`, ...) and FSDP2's (`ModelParallelStrategy`: `state_dict`,
    `optimizer_0`, ..., optimizer states keyed by parameter name).
    """
    import re

    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint

    if not (Path(folder) / ".metadata").is_file():
        raise FileNotFoundError(f"{folder}: not a sharded checkpoint folder (no .metadata in it)")
    checkpoint = _load_distributed_checkpoint(Path(folder))
    if "model" in checkpoint:  # FSDP1
        checkpoint = _format_checkpoint(checkpoint)
    else:  # FSDP2: the weights are already under `state_dict`; optimizers back into Lightning's list
        keys = sorted((k for k in checkpoint if re.fullmatch(r"optimizer_\d+", k)), key=lambda k: int(k.split("_")[1]))
        if keys:
            checkpoint["optimizer_states"] = [checkpoint.pop(k) for k in keys]
    if weights_only:
        model, stage = checkpoint_config(checkpoint, str(folder))
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if keeps_key(model, stage, k)}
        for key in ("optimizer_states", "lr_schedulers", "loops", "callbacks"):
            checkpoint.pop(key, None)
    return checkpoint


def save_atomic(obj: Any, out: str | Path) -> Path:
    """`torch.save` to a temporary name beside `out`, renamed when complete (a kill leaves no partial `out`)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dc.export.consolidate", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a sharded checkpoint folder (e.g. RUN/checkpoints/last.ckpt)")
    parser.add_argument("output", help="the .ckpt file to write")
    parser.add_argument("--weights-only", action="store_true", help="keep only the weights a checkpoint must hold")
    args = parser.parse_args(argv)
    with errors_as_messages(export_user_errors()):
        print(save_atomic(consolidate(args.folder, weights_only=args.weights_only), args.output))


if __name__ == "__main__":
    main()
