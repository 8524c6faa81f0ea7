"""Checks of the chat's command line that need no model (and import nothing heavy), so a wrong path fails in a
second rather than after torch and transformers have loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from omegaconf import DictConfig

MODES = ("cli", "web")

Source = Literal["dc", "hf_dir", "config"]


def model_source(cfg: DictConfig) -> Source:
    """Where the model comes from: "dc" (a checkpoint file at `ckpt_path`), "hf_dir" (an exported HF Llava
    directory at `ckpt_path`) or "config" (another `model` option, e.g. `model=hf model.path=<dir or hub id>`).

    Raises:
        ValueError: `ckpt_path` unset for `model=dc`, or a directory without config.json.
        FileNotFoundError: `ckpt_path` does not exist.
    """
    if not str(cfg.model.get("_target_", "")).endswith("DCModel"):
        return "config"
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        raise ValueError(
            "ckpt_path must be set: a dc checkpoint (.ckpt) or an exported HF Llava directory "
            "(or model=hf model.path=<dir or hub id>)"
        )
    path = Path(str(ckpt))
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path={ckpt}: no such file or directory")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"ckpt_path={ckpt} is a directory without config.json: give a dc checkpoint file or a directory "
                "written by python -m dc.export"
            )
        return "hf_dir"
    return "dc"


def preflight(cfg: DictConfig) -> None:
    """Refuse a bad `mode`, model source or start file before anything is loaded.

    Raises:
        ValueError: an unknown mode, both image= and video=, or a bad `ckpt_path` (see `model_source`).
        FileNotFoundError: a missing checkpoint, image or video.
    """
    if cfg.get("mode") not in MODES:
        raise ValueError(f"mode={cfg.get('mode')!r}: expected one of {MODES}")
    model_source(cfg)
    image, video = cfg.get("image_file"), cfg.get("video_file")
    if image and video:
        raise ValueError(f"give image= or video=, not both (image={image}, video={video})")
    for key, value in (("image", image), ("video", video)):
        if value and not Path(str(value)).exists():
            raise FileNotFoundError(f"{key}={value}: no such file or directory")
