"""What the evaluation runner (and the chat front-ends) generate with: a dc checkpoint or any HF Llava directory.

Both wrappers turn a prompt text (with one `<image>` per visual input) and its visual inputs (PIL images, or lists of
PIL frames for videos) into a model-specific sample, generate batches of samples greedily (or as the benchmark says),
and describe themselves with a fingerprint, so answers on disk are reused only for the same model.

* `DCModel` (`model=dc`, `ckpt_path=...`): `load_vlm` on the checkpoint, the model's own chat template and image
  mode (AnyRes included), videos through the FreeVA path: frames batched through encoder → connector → projector,
  then the temporal aggregation (`video.aggregate`: pool / concat / mean) into one placeholder.
* `HFLlavaModel` (`model=hf model.path=<dir or hub id>`): a stock `LlavaForConditionalGeneration` with its
  `AutoProcessor` and the processor's own chat template (an exported dc model renders dc's template); images only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from dc.constants import IMAGE_PLACEHOLDER
from dc.data.visual import VisualProcessor, build_visual_processor
from dc.eval.generate import generate_texts, prompt_sample
from dc.models.visual.base import VIDEO, VisualMeta
from dc.models.visual.temporal import TEMPORAL_MODES, temporal_aggregate, temporal_tokens
from dc.training.checkpoint import load_vlm
from dc.utils.errors import ConfigError
from dc.utils.instantiate import model_targets

log = logging.getLogger(__name__)

Visual = Image.Image | list[Image.Image]
"""One visual input: an image, or a video's sampled frames."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """`runtime.precision`: "auto" (bf16 on CUDA, fp32 on CPU), "bfloat16", "float16" (the reference's) or "float32"."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision not in DTYPES:
        raise ConfigError(f"runtime.precision={precision!r}: expected auto or one of {sorted(DTYPES)}")
    return DTYPES[precision]


def check_image_aspect(image_aspect: str | None) -> None:
    """`image_aspect` (eval.py's and the chat's key, which sets the image processor's `image.aspect`)."""
    from dc.models.visual.single import check_aspect

    check_aspect(image_aspect, "image_aspect", allowed_null="the model's own")


def file_identity(path: Path) -> dict[str, Any]:
    """Path, size and modification time of a file (what makes two checkpoints the same for stale answers)."""
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass(frozen=True)
class VideoSettings:
    """How videos are read and aggregated (`eval.video`).

    Attributes:
        num_frames: frames sampled per video (the reference's 8).
        aggregate: temporal aggregation after the projector: "pool" (the paper's), "concat" or "mean".
    """

    num_frames: int = 8
    aggregate: str = "pool"

    def __post_init__(self) -> None:
        if self.aggregate not in TEMPORAL_MODES:
            raise ConfigError(f"eval.video.aggregate={self.aggregate!r}: expected one of {TEMPORAL_MODES}")
        if not (isinstance(self.num_frames, int) and self.num_frames >= 1):
            raise ConfigError(f"eval.video.num_frames={self.num_frames!r} must be a positive integer")


class InferenceModel(ABC):
    """A model the runner can prompt and generate with."""

    device: torch.device
    videos: ClassVar[bool] = True  # whether `sample` takes videos (a list of frames as one visual)

    @abstractmethod
    def sample(self, text: str, visuals: Sequence[Visual]) -> dict[str, Any]:
        """A generation sample for `text` (one `<image>` per visual, in order); raises ValueError when it cannot."""

    @abstractmethod
    def generate(self, samples: Sequence[dict[str, Any]], max_new_tokens: int, **generation: Any) -> list[str]:
        """Answers for `samples` (generated as one batch), in order."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What identifies this model's answers (source, precision, input settings)."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """Human-readable facts: source, connector, encoder, LLM (for reports and the chat UI)."""

    def length(self, sample: dict[str, Any]) -> int:
        """The sample's prompt length in tokens (visual tokens included)."""
        return len(sample["input_ids"])


class DCModel(InferenceModel):
    """A dc checkpoint.

    Args:
        ckpt_path: the checkpoint (`ckpt_path=`; consolidate FSDP-sharded ones first).
        device: where to run ("cuda", "cpu", "cuda:1", ...).
        precision: "auto", "bfloat16", "float16" or "float32".
        image_aspect: single-view images' aspect at evaluation ("pad", as the reference).
        video: frame count and temporal aggregation for video inputs.
        extra_prefixes: the user's own model module prefixes (`extra_target_prefixes`).
        model_overrides: dotted model-config keys to change before building (e.g. a local `llm.pretrained`).
    """

    def __init__(
        self,
        ckpt_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        image_aspect: str = "pad",
        video: VideoSettings | None = None,
        extra_prefixes: Sequence[str] | None = None,
        model_overrides: dict[str, Any] | None = None,
    ) -> None:
        check_image_aspect(image_aspect)  # before the weights are read
        self.path = Path(ckpt_path)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(precision, self.device)
        name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[self.dtype]
        # Built directly in the evaluation dtype (never an fp32 copy beside a bf16 one).
        overrides = {"llm.dtype": name, "encoder.model.dtype": name, **(model_overrides or {})}
        self.vlm, self.model_cfg, self.stage_cfg = load_vlm(
            self.path, model_overrides=overrides, extra_prefixes=extra_prefixes
        )
        self.vlm.to(device=self.device, dtype=self.dtype).eval()
        self.visual: VisualProcessor = build_visual_processor(
            self.model_cfg, aspect=image_aspect, allowed=model_targets(extra_prefixes)
        )
        self.image_aspect = image_aspect
        self.video = video or VideoSettings()
        aggregate = self.video.aggregate
        self.vlm.video_merge = lambda frames, meta: temporal_aggregate(frames, aggregate)

    # -- prompts ---------------------------------------------------------------------------------------
    def video_meta(self, frames: int) -> VisualMeta:
        """The `VisualMeta` of a video of `frames` sampled frames (aggregated token count)."""
        tokens = temporal_tokens(frames, self.visual.view.total, self.video.aggregate)
        return VisualMeta(views=frames, tokens=tokens, kind=VIDEO)

    def check_video_fits(self, frames: int | None = None) -> None:
        """Refuse a video setting whose aggregated tokens alone exceed the LLM's maximum positions."""
        frames = frames or self.video.num_frames
        limit = self.vlm.llm.max_positions
        tokens = self.video_meta(frames).tokens
        if limit is not None and tokens >= limit:
            raise ConfigError(
                f"a video of {frames} frames aggregates to {tokens} visual tokens ({self.visual.view.total} per frame, "
                f"aggregate={self.video.aggregate!r}) but the LLM takes at most {limit} positions; lower "
                f"video.num_frames (or the benchmark's own benchmark.num_frames) or use video.aggregate=pool "
                f"(halves each frame) or mean"
            )

    def sample(self, text: str, visuals: Sequence[Visual]) -> dict[str, Any]:
        inputs = []
        for item in visuals:
            if isinstance(item, list):
                if not item:
                    raise ValueError("a video with no frames")
                inputs.append((self.visual.frames(item), self.video_meta(len(item))))
            else:
                inputs.append(self.visual(item))
        out = prompt_sample(self.vlm, text, inputs)
        limit = self.vlm.llm.max_positions
        if limit is not None and len(out["input_ids"]) >= limit:
            raise ValueError(f"the prompt takes {len(out['input_ids'])} tokens, the LLM at most {limit}")
        return out

    def generate(self, samples: Sequence[dict[str, Any]], max_new_tokens: int, **generation: Any) -> list[str]:
        return generate_texts(
            self.vlm, samples, batch_size=max(1, len(samples)), max_new_tokens=max_new_tokens, **generation
        )

    def fingerprint(self) -> dict[str, Any]:
        return {
            "kind": "dc",
            "checkpoint": file_identity(self.path),
            "dtype": str(self.dtype).replace("torch.", ""),
            "image_aspect": self.image_aspect,
            "video": {"num_frames": self.video.num_frames, "aggregate": self.video.aggregate},
        }

    def describe(self) -> dict[str, str]:
        m = self.model_cfg
        return {
            "source": str(self.path),
            "connector": str(m.connector.get("_target_", "")).rsplit(".", 1)[-1],
            "encoder": str(m.encoder.get("name")),
            "llm": str(
                m.llm.get("pretrained") or "built from its config (no pretrained source; weights from the checkpoint)"
            ),
            "image": str(m.get("image", {}).get("_target_", "single")).rsplit(".", 1)[-1],
        }


class HFLlavaModel(InferenceModel):
    """A stock Hugging Face `LlavaForConditionalGeneration` (an exported dc model, or e.g. llava-hf/llava-1.5-7b-hf).

    Args:
        path: a local directory or a hub id (`model.path`).
        device: where to run.
        precision: as for `DCModel`.
        trust_remote_code: never on unless the user sets it (`model.trust_remote_code`).
        image_aspect, video, extra_prefixes: accepted for the runner's uniform call; the processor decides the image
            processing, and videos are refused.
    """

    videos: ClassVar[bool] = False  # a stock Llava has no temporal aggregation

    def __init__(
        self,
        path: str,
        *,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        trust_remote_code: bool = False,
        image_aspect: str | None = None,
        video: VideoSettings | None = None,
        extra_prefixes: Sequence[str] | None = None,
    ) -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        from dc.models.hub import from_pretrained

        check_image_aspect(image_aspect)
        if image_aspect not in (None, "pad"):
            log.warning(
                "image_aspect=%s is not used by model=hf: the model's own processor prepares the images (an exported "
                "dc model's processor does what its checkpoint was trained with)",
                image_aspect,
            )
        self.path = str(path)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(precision, self.device)
        self.model = (
            from_pretrained(
                LlavaForConditionalGeneration.from_pretrained,
                self.path,
                "model.path",
                dtype=self.dtype,
                trust_remote_code=trust_remote_code,
            )
            .to(self.device)
            .eval()
        )
        self.processor = from_pretrained(
            AutoProcessor.from_pretrained, self.path, "model.path", trust_remote_code=trust_remote_code
        )
        self.processor.tokenizer.padding_side = "left"

    def sample(self, text: str, visuals: Sequence[Visual]) -> dict[str, Any]:
        if any(isinstance(v, list) for v in visuals):
            raise ValueError(
                "a stock LlavaForConditionalGeneration has no video path; evaluate videos with a dc checkpoint"
            )
        chunks = text.split(IMAGE_PLACEHOLDER)
        if len(chunks) - 1 != len(visuals):
            raise ValueError(f"prompt has {len(chunks) - 1} <image> tags but {len(visuals)} images were given")
        content: list[dict[str, Any]] = []
        for k, chunk in enumerate(chunks):
            if k:
                content.append({"type": "image"})
            if chunk:
                content.append({"type": "text", "text": chunk})
        prompt = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        images = [v.convert("RGB") if v.mode != "RGB" else v for v in visuals]
        ids = self.processor(text=prompt, images=images or None, return_tensors="pt")["input_ids"][0]
        return {"prompt": prompt, "images": images, "input_ids": ids}

    def generate(self, samples: Sequence[dict[str, Any]], max_new_tokens: int, **generation: Any) -> list[str]:
        images = [img for s in samples for img in s["images"]]
        batch = self.processor(
            text=[s["prompt"] for s in samples], images=images or None, padding=True, return_tensors="pt"
        ).to(self.device)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        settings = {"do_sample": False, "num_beams": 1, **generation}
        with torch.no_grad():
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, **settings)
        new = out[:, batch["input_ids"].shape[1] :]
        return [t.strip() for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def fingerprint(self) -> dict[str, Any]:
        local = Path(self.path)
        config = local / "config.json"
        digest = hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.is_file() else None
        weights = sorted(local.glob("*.safetensors")) if local.is_dir() else []
        return {
            "kind": "hf",
            "path": str(local.resolve()) if local.exists() else self.path,
            "config_sha256": digest,
            "weights": [file_identity(w) for w in weights],
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    def describe(self) -> dict[str, str]:
        c = self.model.config
        layers = json.dumps(c.vision_feature_layer)
        return {
            "source": self.path,
            "connector": f"stock Llava, vision_feature_layer={layers}",
            "encoder": type(self.model.model.vision_tower).__name__,
            "llm": c.text_config.model_type,
            "image": "single",
        }
