"""What the terminal chat and the web demo share: conversations, input checks and the question → answer step.

A `Conversation` is plain data (its image or video, and the LLaVA turns so far), so each browser tab can hold its
own while every tab shares one loaded model. `Chat` holds the model (`ChatBackend`), the generation settings and
the input limits, and does the work:

* `load_visual(path)` reads an image (AnyRes too: the model's image mode decides the views) or a video (a file, or
  a folder of frames, sampled as `eval.py` samples them) and returns a new conversation about it;
* `stream(conversation, question)` builds the prompt for every turn so far plus the question, with the visual
  input's `<image>` at the front of the first question (where LLaVA puts it, so a first answer equals the
  evaluation's answer to the same question), checks it fits the model's context, and yields the answer as it
  grows; the turn is added to the conversation only once the answer is complete.

Bad input never escapes as a traceback: an unreadable, oversized or too-large-in-pixels image, a video with no
frames, an empty question, or a conversation that no longer fits the context all raise `ChatError`, whose message
says what was wrong and what to do; the front-ends show it and carry on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig

from dc.chat.backends import ChatBackend, Streamed, load_backend, stream_answer
from dc.chat.inputs import ChatError, InputLimits, is_video_path, read_image, read_video
from dc.constants import IMAGE_PLACEHOLDER
from dc.eval.models import Visual
from dc.models.llms.templates import GPT, HUMAN
from dc.utils.errors import ConfigError, config_number


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated (`generation` in configs/chat.yaml).

    Attributes:
        max_new_tokens: the longest answer, in tokens (shortened to what the context has room for).
        temperature: 0 decodes greedily (the default, as the evaluation); above 0 samples at this temperature.
        top_p: nucleus sampling mass when sampling.
        seed: reseed the random generators with it before each sampled answer (reproducible sampling).
    """

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            raise ConfigError(f"generation.max_new_tokens={self.max_new_tokens!r} must be a positive integer")
        if not self.temperature >= 0:
            raise ConfigError(f"generation.temperature={self.temperature!r} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"generation.top_p={self.top_p!r} must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        """Whether answers are decoded greedily."""
        return self.temperature == 0

    def kwargs(self) -> dict[str, Any]:
        """Hugging Face `generate` settings."""
        if self.greedy:
            return {"do_sample": False, "num_beams": 1}
        return {"do_sample": True, "num_beams": 1, "temperature": float(self.temperature), "top_p": float(self.top_p)}


@dataclass
class Conversation:
    """One conversation: its visual input (if any) and the LLaVA turns so far (human / gpt alternating).

    Attributes:
        visual: an image, or a video's sampled frames; attached to the first question.
        source: the file it came from (for display).
        turns: completed turns only (each human turn followed by the answer to it).
    """

    visual: Visual | None = None
    source: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The input's kind: image, video or none."""
        if self.visual is None:
            return "none"
        return "video" if isinstance(self.visual, list) else "image"

    def restarted(self) -> Conversation:
        """The same visual input with no turns (what /reset gives)."""
        return Conversation(self.visual, self.source)

    def describe(self) -> str:
        """One line about the visual input."""
        if self.visual is None:
            return "no image or video (text only)"
        name = Path(self.source).name if self.source else "upload"
        if isinstance(self.visual, list):
            return f"video {name} ({len(self.visual)} frames)"
        return f"image {name} ({self.visual.width}×{self.visual.height})"


class Prompt(NamedTuple):
    """A question ready to generate for: the backend's input, the answer's token budget, the human turn."""

    sample: dict[str, Any]
    budget: int
    turn: dict[str, str]


@dataclass(frozen=True)
class Answer:
    """A finished answer and how long it took."""

    text: str
    tokens: int
    seconds: float

    def summary(self) -> str:
        """How many tokens, how long, how fast."""
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        return f"{self.tokens} tokens in {self.seconds:.1f} s ({rate:.1f} tokens/s)"


class Chat:
    """A loaded model with its settings: turns questions about a conversation into streamed answers.

    Args:
        backend: the model (`dc.chat.backends.load_backend`).
        settings: generation settings.
        limits: input limits.
        num_frames: frames sampled per video (as `eval.py`'s `video.num_frames`).
    """

    def __init__(
        self,
        backend: ChatBackend,
        settings: GenerationSettings | None = None,
        limits: InputLimits | None = None,
        num_frames: int = 8,
    ) -> None:
        self.backend = backend
        self.settings = settings or GenerationSettings()
        self.limits = limits or InputLimits()
        self.num_frames = num_frames

    def describe(self) -> dict[str, str]:
        """What is loaded (for the banner / page header)."""
        return self.backend.describe()

    def load_visual(self, path: str | Path, kind: str | None = None) -> Conversation:
        """A new conversation about the image or video at `path`.

        Args:
            path: an image, a video file or a folder of frames.
            kind: "image" or "video"; None decides from the path (`is_video_path`).

        Raises:
            ChatError: the file cannot be used (the message says why).
        """
        kind = kind or ("video" if is_video_path(path) else "image")
        if kind == "video":
            if not self.backend.supports_video:
                raise ChatError(
                    "this model has no video path (a stock Llava export): chat about videos with a dc checkpoint"
                )
            visual: Visual = read_video(path, self.num_frames, self.limits)
        elif kind == "image":
            visual = read_image(path, self.limits)
        else:
            raise ValueError(f"kind={kind!r}: expected 'image' or 'video'")
        conversation = Conversation(visual, str(path))
        self.prepare(conversation, "Describe it.")  # refuse now, not at the first question, what can never fit
        return conversation

    def prepare(self, conversation: Conversation, question: str, max_new_tokens: int | None = None) -> Prompt:
        """The generation input for `question` after the conversation's turns, with the answer's token budget
        (`max_new_tokens`, default the settings', shortened to the room left in the model's context).

        Raises:
            ChatError: an empty or too long question, or a prompt that does not fit the model's context.
        """
        question = question.strip()
        if not question:
            raise ChatError("empty question: type a question first")
        if len(question) > self.limits.max_question_chars:
            raise ChatError(
                f"the question has {len(question)} characters, over the {self.limits.max_question_chars} limit "
                "(limits.max_question_chars)"
            )
        if IMAGE_PLACEHOLDER in question:
            raise ChatError(f"{IMAGE_PLACEHOLDER} is reserved: attach images with the upload (or /image), not in text")
        visuals = [] if conversation.visual is None else [conversation.visual]
        if visuals and not conversation.turns:
            question = f"{IMAGE_PLACEHOLDER}\n{question}"  # LLaVA's (and the evaluation's) single-image prompt
        turn = {"from": HUMAN, "value": question}
        try:
            sample = self.backend.prepare([*conversation.turns, turn], visuals)
        except ChatError:
            raise
        except ValueError as err:
            raise ChatError(str(err)) from None
        length = self.backend.length(sample)
        limit = self.backend.max_positions
        wanted = max_new_tokens or self.settings.max_new_tokens
        room = wanted if limit is None else min(wanted, limit - length)
        if room < 1:
            raise ChatError(
                f"the conversation would take {length} tokens (visual tokens included) but the model reads at most "
                f"{limit}: start a new conversation (/reset or the Reset button)"
            )
        return Prompt(sample, room, turn)

    def stream(
        self, conversation: Conversation, question: str, settings: GenerationSettings | None = None
    ) -> Iterator[Streamed]:
        """Yield the answer to `question` as it grows; the last item is the whole answer (`done=True`).

        The question and the answer are added to `conversation.turns` once the answer is complete (an error
        or an abandoned stream leaves the conversation as it was).

        Raises:
            ChatError: bad input (see `prepare`); checked before anything is generated.
        """
        settings = settings or self.settings
        prompt = self.prepare(conversation, question, settings.max_new_tokens)
        if not settings.greedy and settings.seed is not None:
            torch.manual_seed(settings.seed)
        for step in stream_answer(self.backend, prompt.sample, prompt.budget, settings.kwargs()):
            if step.done:
                conversation.turns += [prompt.turn, {"from": GPT, "value": step.text}]
            yield step

    def ask(self, conversation: Conversation, question: str) -> Answer:
        """The whole answer to `question` (see `stream`)."""
        started = time.perf_counter()
        steps = list(self.stream(conversation, question))
        return Answer(steps[-1].text, steps[-1].tokens, time.perf_counter() - started)


def chat_from_config(cfg: DictConfig) -> Chat:
    """The `Chat` that configs/chat.yaml describes (model loaded on its device)."""
    gen = cfg.get("generation") or {}
    seed = gen.get("seed")
    settings = GenerationSettings(
        max_new_tokens=config_number(gen.get("max_new_tokens", 512), "generation.max_new_tokens", int),
        temperature=config_number(gen.get("temperature", 0.0), "generation.temperature"),
        top_p=config_number(gen.get("top_p", 1.0), "generation.top_p"),
        seed=None if seed is None else config_number(seed, "generation.seed", int),
    )
    lim = cfg.get("limits") or {}
    defaults = InputLimits()
    limits = InputLimits(
        max_image_mb=config_number(lim.get("max_image_mb", defaults.max_image_mb), "limits.max_image_mb"),
        max_image_pixels=config_number(
            lim.get("max_image_pixels", defaults.max_image_pixels), "limits.max_image_pixels", int
        ),
        max_video_mb=config_number(lim.get("max_video_mb", defaults.max_video_mb), "limits.max_video_mb"),
        max_question_chars=config_number(
            lim.get("max_question_chars", defaults.max_question_chars), "limits.max_question_chars", int
        ),
    )
    frames = config_number((cfg.get("video_settings") or {}).get("num_frames", 8), "video_settings.num_frames", int)
    return Chat(load_backend(cfg), settings, limits, num_frames=frames)


def initial_conversation(chat: Chat, cfg: DictConfig) -> Conversation:
    """The conversation to start with: about `image_file` or `video_file` when one is given (not both), else
    text only.

    Raises:
        ChatError: both are given, or the file cannot be used.
    """
    image, video = cfg.get("image_file"), cfg.get("video_file")
    if image and video:
        raise ChatError(f"give image= or video=, not both (image={image}, video={video})")
    if image:
        return chat.load_visual(str(image), "image")
    if video:
        return chat.load_visual(str(video), "video")
    return Conversation()
