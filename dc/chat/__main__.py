"""`python -m dc.chat ckpt_path=<checkpoint or exported HF directory> image=<path>` (`mode=web` for the web demo).

Same override style as eval.py (configs/chat.yaml); `image=` and `video=` are short for `image_file=` and
`video_file=`. Problems the user can fix (a missing checkpoint, a bad image, a missing optional package) print
`error: <why>` and exit with status 1, without a traceback; paths are checked before torch is even imported.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dc.chat.preflight import preflight
from dc.utils.cli import errors_as_messages

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
SHORTHANDS = {"image=": "image_file=", "video=": "video_file="}


def expand_shorthands(args: list[str]) -> list[str]:
    """`image=<path>` / `video=<path>` → `image_file=<path>` / `video_file=<path>`.

    `image` is also the image-mode config group (configs/image/), so Hydra itself would read `image=<path>` as
    choosing an option of that group; the chat has no use for the group, so the short form means the file.
    """
    out = []
    for arg in args:
        for short, full in SHORTHANDS.items():
            if arg.startswith(short):
                arg = full + arg[len(short) :]
                break
        out.append(arg)
    return out


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="chat")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    with errors_as_messages((ValueError, FileNotFoundError)):
        preflight(cfg)  # a wrong path fails here, before torch loads
    from dc.chat.inputs import ChatError
    from dc.models.hub import PretrainedNotFoundError
    from dc.training.checkpoint import UnsafeCheckpointError
    from dc.utils.instantiate import UntrustedTargetError

    errors = (
        ChatError,
        FileNotFoundError,
        PretrainedNotFoundError,
        UnsafeCheckpointError,
        UntrustedTargetError,
        ValueError,
    )
    with errors_as_messages(errors):
        if cfg.mode == "web":
            from dc.chat.web import serve

            status = serve(cfg)
        else:
            from dc.chat.cli import run

            status = run(cfg)
    raise SystemExit(status)


if __name__ == "__main__":
    sys.argv[1:] = expand_shorthands(sys.argv[1:])  # before Hydra parses them
    main()
