"""The web demo: `python -m dc.chat mode=web ckpt_path=<checkpoint or exported HF directory>` (Gradio).

Upload an image or a video, ask, watch the answer stream in, ask again to continue the conversation, Reset to
start over with the same upload. The page names what is loaded (checkpoint, connector, encoder, LLM, image mode,
device). It listens on `server.host:server.port`, 127.0.0.1:7860 by default (this machine only).

Every browser tab has its own conversation (a `gr.State` of plain data); all tabs share the one loaded model and
take turns on it (one generation at a time). Bad input (an unreadable or huge image, a video with no frames, an
empty question, a conversation that no longer fits the context) shows `error: <why>` in the status line and the
page carries on; the status line says `answered (turn N): ...` once an answer is complete.

Gradio is an optional dependency: `pip install -e '.[demo]'` (docs/chat.md).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from PIL import Image

from dc.chat.inputs import MB, VIDEO_SUFFIXES, ChatError
from dc.chat.session import Answer, Chat, Conversation, GenerationSettings, chat_from_config, initial_conversation
from dc.constants import IMAGE_PLACEHOLDER
from dc.models.llms.templates import HUMAN
from dc.utils.errors import ConfigError, config_number

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
"""What the upload offers (the checks in `dc.chat.inputs` decide what is accepted)."""
PREVIEW_MIN = 224
"""Previews smaller than this (longest side, pixels) are enlarged for display only."""


def import_gradio() -> Any:
    """The `gradio` module, or a `ChatError` saying how to install it."""
    try:
        import gradio
    except ImportError:
        raise ChatError(
            "the web demo needs Gradio, an optional dependency: pip install -e '.[demo]' (see docs/chat.md)"
        ) from None
    return gradio


def model_markdown(chat: Chat) -> str:
    """What is loaded, as a Markdown line for the page header."""
    return " · ".join(f"**{key}**: `{value}`" for key, value in chat.describe().items())


def messages(conversation: Conversation) -> list[dict[str, str]]:
    """The conversation's turns as chatbot messages (without the `<image>` tag the prompt carries)."""
    out = []
    for turn in conversation.turns:
        role = "user" if turn["from"] == HUMAN else "assistant"
        out.append({"role": role, "content": turn["value"].replace(IMAGE_PLACEHOLDER, "").strip()})
    return out


def preview(conversation: Conversation) -> Any:
    """The image to show for the conversation's input: the image, or a video's first sampled frame."""
    if conversation.visual is None:
        return None
    image = conversation.visual[0] if isinstance(conversation.visual, list) else conversation.visual
    if max(image.size) < PREVIEW_MIN:  # small images (the synthetic 48 px scenes) shown enlarged, pixels kept sharp
        scale = -(-PREVIEW_MIN // max(image.size))
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return image


def error(err: Exception) -> str:
    """The status line for a refused input."""
    return f"error: {err}"


class WebChat:
    """The page's event handlers around one `Chat` (kept apart from Gradio so they read as plain functions)."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat

    def upload(self, path: str | None) -> tuple[Conversation, list, Any, str]:
        """A new conversation about the uploaded file (or a text-only one when the upload is cleared)."""
        if not path:
            return Conversation(), [], None, "no image or video: a text-only conversation"
        try:
            conversation = self.chat.load_visual(path)
        except ChatError as err:
            return Conversation(), [], None, error(err)
        return conversation, [], preview(conversation), f"loaded {conversation.describe()}: ask a question"

    def reset(self, conversation: Conversation) -> tuple[Conversation, list, str]:
        """The same upload, no turns."""
        fresh = conversation.restarted()
        return fresh, [], f"new conversation: {fresh.describe()}"

    def ask(
        self, question: str, conversation: Conversation, max_new_tokens: float, temperature: float, top_p: float
    ) -> Iterator[tuple[Conversation, list, str, str]]:
        """Yield (conversation, chat messages, question box, status) as the answer streams in."""
        history = messages(conversation)
        asked = {"role": "user", "content": (question or "").strip()}
        started = time.perf_counter()
        last = None
        try:
            settings = dataclasses.replace(
                self.chat.settings,
                max_new_tokens=int(max_new_tokens),
                temperature=float(temperature),
                top_p=float(top_p),
            )
            for last in self.chat.stream(conversation, question or "", settings):
                if not last.done:
                    yield conversation, [*history, asked, {"role": "assistant", "content": last.text}], "", "answering…"
        except ValueError as err:  # refused input (ChatError) or settings, before anything was generated
            yield conversation, history, question, error(err)
            return
        except Exception as err:  # a failed generation must leave the page usable
            yield conversation, history, question, f"error: generation failed: {type(err).__name__}: {err}"
            return
        answer = Answer(last.text, last.tokens, time.perf_counter() - started)
        turn = len(conversation.turns) // 2
        yield conversation, messages(conversation), "", f"answered (turn {turn}): {answer.summary()}"


def build_demo(chat: Chat, initial: Conversation | None = None) -> Any:
    """The Gradio page (a `gr.Blocks`) for `chat`, each new tab starting from `initial`."""
    gr = import_gradio()
    web = WebChat(chat)
    start = initial or Conversation()
    settings: GenerationSettings = chat.settings
    status_text = (
        f"loaded {start.describe()}: ask a question" if start.visual is not None else "upload an image or a video"
    )
    with gr.Blocks(title="dc chat", analytics_enabled=False) as demo:
        state = gr.State(start)
        gr.Markdown("## Dense Connector chat")
        gr.Markdown(model_markdown(chat), elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Image or video",
                    file_types=list(IMAGE_SUFFIXES + VIDEO_SUFFIXES),
                    type="filepath",
                    elem_id="upload",
                )
                shown = gr.Image(value=preview(start), label="Input", interactive=False, height=240, elem_id="preview")
                status = gr.Textbox(value=status_text, label="Status", interactive=False, elem_id="status")
                with gr.Accordion("Generation", open=False):
                    max_new = gr.Slider(1, 4096, value=settings.max_new_tokens, step=1, label="max new tokens")
                    temperature = gr.Slider(
                        0.0, 2.0, value=settings.temperature, step=0.05, label="temperature (0 = greedy)"
                    )
                    top_p = gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="top-p (when sampling)")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(value=messages(start), label="Conversation", height=420, elem_id="chat")
                question = gr.Textbox(
                    placeholder="Ask about the image or video, then Enter",
                    show_label=False,
                    lines=1,
                    elem_id="question",
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    reset = gr.Button("Reset", elem_id="reset")
        upload.change(web.upload, [upload], [state, chatbot, shown, status])
        inputs = [question, state, max_new, temperature, top_p]
        outputs = [state, chatbot, question, status]
        question.submit(web.ask, inputs, outputs)
        send.click(web.ask, inputs, outputs)
        reset.click(web.reset, [state], [state, chatbot, status])
    return demo


def check_port(host: str, port: int) -> None:
    """`server.host:server.port` can be served (checked before the model loads; the port is free again after).

    Raises:
        ConfigError: naming `server.port` (or `server.host`) and why.
    """
    import socket

    if not 0 <= port <= 65535:
        raise ConfigError(f"server.port={port}: expected 0-65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"server.host={host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"server.port={port}: cannot serve on {host}:{port} ({exc.strerror}); choose another server.port"
            ) from None


def serve(cfg: DictConfig) -> int:
    """`python -m dc.chat mode=web ...`: load the model and serve the page until interrupted; the exit status."""
    host, port = str(cfg.server.host), config_number(cfg.server.port, "server.port", int)
    check_port(host, port)  # options first, then the optional dependency: both before the model loads
    import_gradio()
    chat = chat_from_config(cfg)
    demo = build_demo(chat, initial_conversation(chat, cfg))
    limit_mb = max(chat.limits.max_image_mb, chat.limits.max_video_mb)
    print(
        f"dc chat web demo: http://{host}:{port}  ({Path(str(cfg.get('ckpt_path') or '')).name or 'model'})", flush=True
    )
    demo.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        ssr_mode=False,
        max_file_size=int(limit_mb * MB),
        show_error=False,
    )
    return 0
