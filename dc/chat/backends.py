"""The models a chat talks to: a whole conversation → one prompt, and its answer streamed as it is generated.

Two backends wrap the evaluation runner's model classes (`dc.eval.models`), so a chat answers a first question
exactly as `eval.py` does:

* `DCBackend` (a dc checkpoint, `DCModel`): the prompt is the model's own chat template over every turn so far
  (`ChatTemplate.prompt_conversation`), each `<image>` expanded to its input's visual tokens (plain, AnyRes or a
  video's aggregated frames), then `VLM.generate` with the template's stop tokens;
* `HFBackend` (an exported or stock HF Llava directory, `HFLlavaModel`): the processor's chat template over the
  turns as user/assistant messages, then `LlavaForConditionalGeneration.generate`; images only.

Streaming (`stream_answer`): generation runs in a worker thread with transformers' `TextIteratorStreamer`; the
caller iterates over the growing text. The last text it gets is the full decode of the generated ids (what the
evaluation writes), not the streamer's concatenation. Leaving the iteration early (Ctrl-C, a closed browser tab)
stops the generation at the next token.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from dc.chat.preflight import model_source
from dc.constants import IMAGE_PLACEHOLDER
from dc.data.collate import Collator
from dc.data.records import expand_visual_tokens
from dc.eval.generate import generate_batch
from dc.eval.models import DCModel, HFLlavaModel, InferenceModel, VideoSettings, Visual
from dc.models.llms.templates import HUMAN
from dc.utils.errors import ConfigError
from dc.utils.instantiate import instantiate, trusted_prefixes

STREAM_TIMEOUT_S = 600.0
"""How long the reader waits for the next piece of text before it gives up on a stuck generation."""


class ChatBackend(ABC):
    """A loaded model that prompts with a whole conversation and generates one answer at a time."""

    model: InferenceModel
    supports_video: bool = False

    @property
    @abstractmethod
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer that decodes the generated ids."""

    @property
    @abstractmethod
    def max_positions(self) -> int | None:
        """The LLM's maximum sequence length (prompt + answer), if it has one."""

    @abstractmethod
    def prepare(self, turns: list[dict], visuals: Sequence[Visual]) -> dict[str, Any]:
        """The generation input for `turns` (LLaVA turns ending with a human turn; one `<image>` per visual).

        Raises:
            ValueError: the conversation or a visual input cannot be prompted (the message says why).
        """

    @abstractmethod
    def length(self, sample: dict[str, Any]) -> int:
        """The prompt length of `sample` in tokens, visual tokens included."""

    @abstractmethod
    def generate(self, sample: dict[str, Any], max_new_tokens: int, **settings: Any) -> torch.Tensor:
        """The new token ids [n] for `sample`; `settings` go to Hugging Face `generate` (streamer included)."""

    def describe(self) -> dict[str, str]:
        """What is loaded: source, connector, encoder, LLM, image mode, device and dtype."""
        facts = dict(self.model.describe())
        dtype = str(self.model.fingerprint().get("dtype"))
        facts["device"] = f"{self.model.device} ({dtype})"
        facts["max positions"] = str(self.max_positions)
        return facts


class DCBackend(ChatBackend):
    """A dc checkpoint through `DCModel`: its chat template, image mode and video aggregation."""

    supports_video = True

    def __init__(self, model: DCModel) -> None:
        self.model = model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.model.vlm.llm.tokenizer

    @property
    def max_positions(self) -> int | None:
        return self.model.vlm.llm.max_positions

    def prepare(self, turns: list[dict], visuals: Sequence[Visual]) -> dict[str, Any]:
        m = self.model
        inputs = []
        for item in visuals:
            if isinstance(item, list):
                if not item:
                    raise ValueError("the video has no frames")
                m.check_video_fits(len(item))
                inputs.append((m.visual.frames(item), m.video_meta(len(item))))
            else:
                inputs.append(m.visual(item))
        # The same construction as `dc.eval.generate.prompt_sample`, over every turn instead of one.
        ids = m.vlm.llm.template.prompt_conversation(turns, self.tokenizer)
        ids, _ = expand_visual_tokens(ids, [0] * len(ids), [meta.tokens for _, meta in inputs])
        size = m.vlm.encoder.layout.image_size
        pixels = torch.cat([views for views, _ in inputs]) if inputs else torch.zeros(0, 3, size, size)
        return {"input_ids": ids, "pixel_values": pixels, "visual": [meta for _, meta in inputs]}

    def length(self, sample: dict[str, Any]) -> int:
        return len(sample["input_ids"])

    def generate(self, sample: dict[str, Any], max_new_tokens: int, **settings: Any) -> torch.Tensor:
        vlm = self.model.vlm
        batch = Collator(self.tokenizer.pad_token_id, padding_side="left")([sample])
        stop = vlm.llm.template.stop_token_ids(self.tokenizer)
        return generate_batch(vlm, batch, max_new_tokens, stop, **settings)[0]


def _message_content(text: str) -> list[dict[str, str]]:
    """A user turn as processor message parts: an image part where each `<image>` stands, text between."""
    parts: list[dict[str, str]] = []
    for k, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if k:
            parts.append({"type": "image"})
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


class HFBackend(ChatBackend):
    """A stock `LlavaForConditionalGeneration` directory through `HFLlavaModel` (its processor's chat template)."""

    def __init__(self, model: HFLlavaModel) -> None:
        self.model = model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.model.processor.tokenizer

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.model.config.text_config, "max_position_embeddings", None)

    def prepare(self, turns: list[dict], visuals: Sequence[Visual]) -> dict[str, Any]:
        if any(isinstance(v, list) for v in visuals):
            raise ValueError("a stock Llava model has no video path: chat about videos with a dc checkpoint")
        messages = [
            {"role": "user", "content": _message_content(t["value"])}
            if t["from"] == HUMAN
            else {"role": "assistant", "content": [{"type": "text", "text": t["value"]}]}
            for t in turns
        ]
        tags = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns if t["from"] == HUMAN)
        if tags != len(visuals):
            raise ValueError(f"the conversation has {tags} <image> tags but {len(visuals)} images were given")
        processor = self.model.processor
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        images = [v.convert("RGB") if v.mode != "RGB" else v for v in visuals]
        batch = processor(text=prompt, images=images or None, return_tensors="pt")
        return {"batch": batch, "input_ids": batch["input_ids"][0]}

    def length(self, sample: dict[str, Any]) -> int:
        return int(sample["input_ids"].shape[0])

    def generate(self, sample: dict[str, Any], max_new_tokens: int, **settings: Any) -> torch.Tensor:
        m = self.model
        batch = sample["batch"].to(m.device)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(m.dtype)
        out = m.model.generate(**batch, max_new_tokens=max_new_tokens, **{"num_beams": 1, **settings})
        return out[0, batch["input_ids"].shape[1] :]


class _StopWhenSet(StoppingCriteria):
    """Stops generation once `event` is set (the reader went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Streamed(NamedTuple):
    """One step of a streamed answer: the text so far; on the last step `done` and the generated token count."""

    text: str
    done: bool = False
    tokens: int = 0


def stream_answer(
    backend: ChatBackend, sample: dict[str, Any], max_new_tokens: int, generation: dict[str, Any]
) -> Iterator[Streamed]:
    """Generate for `sample` in a worker thread and yield the answer as its text grows.

    The last item (`done=True`) holds the whole answer decoded as the evaluation decodes it (special tokens
    skipped, stripped) and the number of generated tokens. Closing the iterator early stops the generation.

    Raises:
        Whatever generation raised (re-raised in the caller's thread), or `queue.Empty` when no text came for
        `STREAM_TIMEOUT_S` seconds.
    """
    tok = backend.tokenizer
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=STREAM_TIMEOUT_S)
    stop = threading.Event()
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["ids"] = backend.generate(
                sample,
                max_new_tokens,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]),
                **generation,
            )
        except BaseException as err:  # handed to the reader, which re-raises it
            result["error"] = err
            streamer.end()

    worker = threading.Thread(target=work, name="dc-chat-generate", daemon=True)
    worker.start()
    text = ""
    try:
        for piece in streamer:
            text += piece
            if piece and text.strip():  # the streamer also hands out empty pieces (held-back partial characters)
                yield Streamed(text.lstrip())
    finally:
        stop.set()
        worker.join()
    if "error" in result:
        raise result["error"]
    ids = result["ids"]
    yield Streamed(tok.decode(ids, skip_special_tokens=True).strip(), True, int(ids.shape[0]))


def resolve_device(name: str) -> torch.device:
    """`runtime.device`: "auto" (the GPU when there is one, else the CPU) or a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"runtime.device={name!r}: expected auto, cpu, cuda or cuda:<index> ({err})") from None


def load_backend(cfg: DictConfig) -> ChatBackend:
    """The chat's model from `configs/chat.yaml`: `ckpt_path` (a dc checkpoint file, or an exported HF Llava
    directory holding config.json) or `model=hf model.path=<dir>`, on `runtime.device` in `runtime.precision`.

    Raises:
        ValueError: no model given, or a directory that is not an HF Llava export.
        FileNotFoundError: `ckpt_path` does not exist.
    """
    device = resolve_device(str(cfg.runtime.get("device", "auto")))
    precision = str(cfg.runtime.get("precision", "auto"))
    extra = cfg.get("extra_target_prefixes")
    if model_source(cfg) == "hf_dir":
        return HFBackend(HFLlavaModel(str(cfg.ckpt_path), device=device, precision=precision))
    video = cfg.get("video_settings") or {}
    factory = instantiate(cfg.model, allowed=trusted_prefixes(extra))
    model = factory(
        device=device,
        precision=precision,
        image_aspect=str(cfg.get("image_aspect", "pad")),
        video=VideoSettings(int(video.get("num_frames", 8)), str(video.get("aggregate", "pool"))),
        extra_prefixes=extra,
    )
    if isinstance(model, DCModel):
        return DCBackend(model)
    if isinstance(model, HFLlavaModel):
        return HFBackend(model)
    raise ConfigError(f"model._target_={cfg.model.get('_target_')}: the chat takes DCModel or HFLlavaModel")
