"""`python -m dc.export ckpt_path=<checkpoint> out_dir=<dir>`: export a dc checkpoint to stock Hugging Face Llava.

Same override style as train.py / eval.py (`configs/export.yaml`). Writes safetensors weights (LoRA merged into the
LLM), config, processor (pad-to-square + the encoder's processor), tokenizer with `<image>` and a chat template that
renders dc's template; refuses, naming the option and why, what stock classes cannot express exactly (STI, Efficient
DC downsampling, AnyRes with DC, ...). See docs/export.md.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from dc.export.errors import export_user_errors
from dc.export.hf_llava import save_hf_llava
from dc.models.builder import build_image_mode
from dc.models.visual.single import SingleView
from dc.training.checkpoint import load_vlm
from dc.utils.cli import errors_as_messages
from dc.utils.instantiate import model_targets

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")


def export(cfg: DictConfig) -> Path:
    """Load the checkpoint and write the stock Llava directory; returns it."""
    extra = cfg.get("extra_target_prefixes")
    vlm, model_cfg, _ = load_vlm(cfg.ckpt_path, extra_prefixes=extra)
    mode = build_image_mode(model_cfg, model_targets(extra))
    image_mode = "single" if isinstance(mode, SingleView) else "anyres"
    out = Path(cfg.out_dir)
    save_hf_llava(
        vlm,
        model_cfg.encoder.image,
        out,
        image_aspect=str(cfg.image_aspect),
        image_mode=image_mode,
        verify=bool(cfg.verify),
    )
    return out


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="export")
def main(cfg: DictConfig) -> None:
    with errors_as_messages(export_user_errors()):
        out = export(cfg)
    print(f"exported {cfg.ckpt_path} -> {out} (LlavaForConditionalGeneration.from_pretrained('{out}'))")


if __name__ == "__main__":
    main()
