"""`python -m dc.export.lora CKPT OUT_DIR [--merge]`: a LoRA run's adapters, connector and (merged) LLM."""

from __future__ import annotations

import argparse

from dc.export.errors import export_user_errors
from dc.training.checkpoint import load_vlm
from dc.training.lora import export_lora
from dc.utils.cli import errors_as_messages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dc.export.lora", description=__doc__)
    parser.add_argument("ckpt", help="a dc checkpoint of a stage=lora run (consolidated for FSDP-sharded runs)")
    parser.add_argument("out_dir")
    parser.add_argument("--merge", action="store_true", help="also write the merged LLM (loadable as llm.pretrained)")
    args = parser.parse_args(argv)
    with errors_as_messages(export_user_errors()):
        vlm, _, _ = load_vlm(args.ckpt)
        print(export_lora(vlm, args.out_dir, merge=args.merge))


if __name__ == "__main__":
    main()
