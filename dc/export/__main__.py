"""`python -m dc.export ckpt_path=<checkpoint> out_dir=<dir>`: export a dc checkpoint to stock Hugging Face Llava.

Same override style as train.py / eval.py (`configs/export.yaml`). Writes safetensors weights (LoRA merged into the
LLM), config, processor (pad-to-square + the encoder's processor), tokenizer with `<image>` and a chat template that
renders dc's template; refuses, naming the option and why, what stock classes cannot express exactly (STI, Efficient
DC downsampling, AnyRes with DC, ...). The image preprocessing and the chat template default to the ones the
checkpoint was trained with (a stage-1 checkpoint: `square` and `plain`). Every option is checked before the
checkpoint is read. See docs/export.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from dc.export.chat_template import check_template_name
from dc.export.errors import export_user_errors
from dc.export.hf_llava import save_hf_llava
from dc.export.staging import check_destination
from dc.models.builder import build_image_mode
from dc.models.llms.templates import ChatTemplate
from dc.models.visual.base import ImageMode
from dc.models.visual.single import SingleView, check_aspect
from dc.training.checkpoint import NotACheckpointError, checkpoint_hparams, load_vlm
from dc.utils.cli import errors_as_messages
from dc.utils.errors import ConfigError
from dc.utils.instantiate import instantiate, model_targets

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXAMPLE = "python -m dc.export ckpt_path=outputs/<run>/checkpoints/last.ckpt out_dir=exports/<name>"


def _options() -> set[str]:
    """The root keys of `configs/export.yaml` (and its `paths` group)."""
    return (set(OmegaConf.load(Path(CONFIGS) / "export.yaml")) - {"defaults", "hydra"}) | {"paths"}


def check_options(cfg: DictConfig) -> None:
    """Every option, before anything is read: the two paths given, no unknown key, `image_aspect`, `template`,
    `dtype` and `verify` among their values.

    Raises:
        ConfigError: naming the key (and the allowed values, or an example command).
    """
    missing = [k for k in ("ckpt_path", "out_dir") if OmegaConf.is_missing(cfg, k) or cfg.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} must be given, e.g. {EXAMPLE}")
    unknown = sorted(set(cfg) - _options())
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]}: python -m dc.export takes {sorted(_options() - {'paths'})}")
    aspect = cfg.get("image_aspect")
    check_aspect(aspect, "image_aspect", allowed_null="the checkpoint's own")
    if cfg.get("template") is not None:
        check_template_name(cfg.template, "template")
    dtype = cfg.get("dtype")
    if dtype is not None and (not isinstance(dtype, str) or dtype not in DTYPES):
        raise ConfigError(f"dtype={dtype!r}: expected one of {list(DTYPES)}, or null (the LLM's, float32)")
    if not isinstance(cfg.get("verify"), bool):
        raise ConfigError(f"verify={cfg.get('verify')!r}: expected true or false")


def _dc_checkpoint(path: Path) -> None:
    """Refuse a file that is not a dc checkpoint before the model is built (a folder: `load_vlm` says why)."""
    if path.is_dir():
        return
    if "model" not in checkpoint_hparams(path):
        raise NotACheckpointError(
            f"ckpt_path={path}: not a dc checkpoint (its hyper_parameters hold no model config); pass a checkpoint "
            f"train.py wrote, e.g. outputs/<run>/checkpoints/last.ckpt"
        )


def trained_aspect(model_cfg: DictConfig, stage: DictConfig, mode: ImageMode) -> str:
    """The single-view preprocessing the checkpoint was trained with: its `image.aspect` (which follows
    `stage.image_aspect`), else its stage's, else "pad".
    """
    if model_cfg.get("image") is not None and isinstance(mode, SingleView):
        return mode.aspect
    return str(stage.get("image_aspect") or "pad")


def trained_template(stage: DictConfig, extra: Any) -> ChatTemplate | None:
    """The chat template the checkpoint was trained with: its stage's (stage 1: `plain`), else None (the LLM's)."""
    node = stage.get("template")
    return instantiate(node, allowed=model_targets(extra)) if node else None


def is_stage1(stage: DictConfig) -> bool:
    """A stage-1 (pretrain) checkpoint: only the connector trained, on captions."""
    return stage.get("name") == "pretrain" or stage.get("data_kind") == "pretrain"


def export(cfg: DictConfig) -> Path:
    """Check the options, load the checkpoint and write the stock Llava directory; returns it."""
    check_options(cfg)
    out, path = Path(str(cfg.out_dir)), Path(str(cfg.ckpt_path))
    check_destination(out, "out_dir", hint="choose a new directory")
    _dc_checkpoint(path)
    extra = cfg.get("extra_target_prefixes")
    vlm, model_cfg, stage = load_vlm(path, extra_prefixes=extra)
    mode = build_image_mode(model_cfg, model_targets(extra))
    image_mode = "single" if isinstance(mode, SingleView) else "anyres"
    image_aspect = cfg.get("image_aspect") or trained_aspect(model_cfg, stage, mode)
    template = cfg.get("template") or trained_template(stage, extra)
    if is_stage1(stage):
        name = template if isinstance(template, str) else (template or vlm.llm.template).name
        print(
            f"note: {path} is a stage-1 (pretrain) checkpoint, a connector-only model: only the connector was "
            f"trained (the LLM is the base model, not instruction-tuned); exported with image_aspect={image_aspect} "
            f"and template {name}"
        )
    save_hf_llava(
        vlm,
        model_cfg.encoder.image,
        out,
        template=template,
        dtype=DTYPES[cfg.dtype] if cfg.get("dtype") else None,
        image_aspect=str(image_aspect),
        image_mode=image_mode,
        verify=cfg.verify,
        record={"checkpoint": str(path), "stage": stage.get("name")},
    )
    return out


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="export")
def main(cfg: DictConfig) -> None:
    with errors_as_messages(export_user_errors()):
        out = export(cfg)
    print(f"exported {cfg.ckpt_path} -> {out} (LlavaForConditionalGeneration.from_pretrained('{out}'))")


if __name__ == "__main__":
    main()
