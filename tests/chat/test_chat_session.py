"""The chat's shared logic on the tiny test checkpoint, in process: bad input is explained and the chat goes on, a
conversation that outgrows the context is refused (and an answer near the limit is shortened, never overflowing),
a video is answered as eval.py answers it, answers stream, sampling is reproducible with a seed, an abandoned
answer leaves the conversation as it was."""

from __future__ import annotations

import io
import random
import re
import threading
from pathlib import Path

import pytest
from PIL import Image

from dc.chat.cli import TerminalChat
from dc.chat.inputs import ChatError
from dc.chat.session import Chat, Conversation, GenerationSettings, chat_from_config
from dc.data.synthetic_video import make_clip, render_clip, write_video
from dc.data.video import decode_video

from chat_helpers import MAX_NEW_TOKENS, Trained
from dc_testing import compose_config

LIMIT = 1024  # max_position_embeddings of the tiny LLM (configs/llm/tiny.yaml)


@pytest.fixture(scope="module")
def chat(trained: Trained) -> Chat:
    cfg = compose_config(
        "chat",
        [
            f"ckpt_path={trained.ckpt}",
            f"generation.max_new_tokens={MAX_NEW_TOKENS}",
            "limits.max_image_pixels=5000",  # the synthetic scenes are 48 x 48 = 2304
            "limits.max_image_mb=0.05",
            "runtime.device=cpu",
        ],
    )
    return chat_from_config(cfg)


def test_bad_inputs_are_explained_and_the_chat_goes_on(chat, trained, eval_answers, tmp_path: Path) -> None:
    question = trained.question(2, "shape")
    good = trained.image(question)
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "half.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    Image.new("RGB", (100, 100), "red").save(tmp_path / "big.png")  # 10,000 pixels > 5,000
    noise = Image.frombytes("RGB", (200, 200), random.Random(0).randbytes(200 * 200 * 3))
    noise.save(tmp_path / "heavy.png")  # ~120 kB > 0.05 MB
    (tmp_path / "frames").mkdir()
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "big_frames").mkdir()
    Image.new("RGB", (50, 50)).save(tmp_path / "big_frames" / "0001.png")
    Image.new("RGB", (100, 60)).save(tmp_path / "big_frames" / "0002.png")  # 6,000 pixels > 5,000
    script = [
        "",
        f"/image {tmp_path / 'missing.png'}",
        f"/image {tmp_path / 'notes.png'}",
        f"/image {tmp_path / 'half.png'}",
        f"/image {tmp_path / 'big.png'}",
        f"/image {tmp_path / 'heavy.png'}",
        f"/video {tmp_path / 'frames'}",
        f"/video {tmp_path / 'clip.mp4'}",
        f"/video {tmp_path / 'big.png'}",  # an image as a one-frame video: the same pixel limit
        f"/video {tmp_path / 'big_frames'}",
        "/image",
        "what is <image> here?",
        "shape " * 1100,  # a text-only question longer than the context
        "/frobnicate",
        f"/image {good}",
        question["text"],
        "/quit",
    ]
    out = io.StringIO()
    assert TerminalChat(chat, Conversation(), io.StringIO("\n".join(script) + "\n"), out).run() == 0
    errors = [line for line in out.getvalue().splitlines() if line.startswith("error: ")]
    expected = [
        "empty question",
        "no image file at .*missing.png",
        "cannot read notes.png as an image: cannot identify image file",
        "cannot read half.png as an image",
        "big.png is 100×100 = 10,000 pixels, over the limit of 5,000 \\(limits.max_image_pixels\\)",
        "heavy.png is 0.1 MB, over the 0.05 MB limit \\(limits.max_image_mb\\)",
        "cannot use frames as a video: .*no frame images",
        "cannot use clip.mp4 as a video: .*cannot open",
        "big.png is 100×100 = 10,000 pixels, over the limit of 5,000 \\(limits.max_image_pixels\\)",
        "big_frames/0002.png is 100×60 = 6,000 pixels, over the limit of 5,000",
        "/image needs a path",
        "<image> is reserved",
        f"the conversation would take \\d+ tokens \\(visual tokens included\\) but the model reads at most {LIMIT}",
        "unknown command /frobnicate",
    ]
    assert len(errors) == len(expected), out.getvalue()
    for line, pattern in zip(errors, expected):
        assert re.match("error: " + pattern, line), line
    assert out.getvalue().rstrip().endswith(f"model> {eval_answers[question['question_id']]}\nyou> /quit")


def _fill(chat: Chat, conversation: Conversation, room: int) -> str:
    """A question after which exactly `room` positions are left in the context (" shape" is one token)."""
    base = chat.prepare(conversation, "shape").sample
    words = LIMIT - room - len(base["input_ids"]) + 1
    return "shape" + " shape" * (words - 1)


def test_info_counts_the_turns(chat: Chat, trained: Trained) -> None:
    question = trained.question(0, "colour")
    script = ["/info", f"/image {trained.image(question)}", question["text"], "/info", question["text"], "/info"]
    out = io.StringIO()
    assert TerminalChat(chat, Conversation(), io.StringIO("\n".join(script) + "\n"), out).run() == 0
    counts = re.findall(r"(\d+ turns?) so far", out.getvalue())
    assert counts == ["0 turns", "1 turn", "2 turns"]


def test_the_context_limit(chat: Chat, trained: Trained) -> None:
    conversation = chat.load_visual(trained.image(trained.question(0, "colour")))
    # an answer that would not fit is shortened to the room left: 3 positions, 3 tokens at most
    question = _fill(chat, conversation, 3)
    prompt = chat.prepare(conversation, question)
    assert len(prompt.sample["input_ids"]) == LIMIT - 3 and prompt.budget == 3
    sampled = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, temperature=5.0, seed=0)  # would not stop early
    steps = list(chat.stream(conversation, question, sampled))
    assert steps[-1].done and steps[-1].tokens == 3
    # the next question no longer fits: refused, and the conversation keeps its one turn
    assert len(conversation.turns) == 2
    with pytest.raises(ChatError, match=f"would take \\d+ tokens .* at most {LIMIT}: start a new conversation"):
        chat.ask(conversation, "What shape is in the picture?")
    assert len(conversation.turns) == 2
    # /reset (same image, no turns) makes room again
    assert chat.ask(conversation.restarted(), "What shape is in the picture?").tokens >= 1


def test_a_video_is_answered_as_eval_answers_it(chat: Chat, tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mp4", render_clip(make_clip(random.Random(0), "move", 12)))
    conversation = chat.load_visual(path)
    assert conversation.kind == "video" and conversation.describe() == "video clip.mp4 (8 frames)"
    answer = chat.ask(conversation, "Where is the shape?").text
    model = chat.backend.model  # eval.py's path: record_visuals (decode_video) → model.sample → model.generate
    sample = model.sample("<image>\nWhere is the shape?", [decode_video(path, 8).frames])
    assert answer == model.generate([sample], MAX_NEW_TOKENS)[0]


def test_answers_stream_and_sampling_is_reproducible(chat: Chat, trained: Trained) -> None:
    image = trained.image(trained.question(1, "colour"))
    sampled = GenerationSettings(max_new_tokens=24, temperature=5.0, seed=7)
    steps = list(chat.stream(chat.load_visual(image), "Describe the picture.", sampled))
    *partial, final = steps
    assert final.done and 2 <= final.tokens <= 24 and not any(s.done for s in partial)
    assert len(partial) >= 2  # the text arrived in pieces, before generation ended
    for a, b in zip(partial, partial[1:]):
        assert b.text.startswith(a.text) and len(b.text) > len(a.text)
    assert final.text.startswith(partial[-1].text.rstrip())
    repeat = list(chat.stream(chat.load_visual(image), "Describe the picture.", sampled))[-1]
    assert repeat.text == final.text  # same seed, same answer


def test_an_abandoned_answer_is_not_kept(chat: Chat, trained: Trained) -> None:
    conversation = chat.load_visual(trained.image(trained.question(1, "shape")))
    stream = chat.stream(conversation, "Describe the picture.", GenerationSettings(max_new_tokens=200, temperature=5.0))
    next(stream)
    stream.close()  # the reader went away (Ctrl-C, a closed tab): generation stops at the next token
    assert conversation.turns == []
    assert not [t for t in threading.enumerate() if t.name == "dc-chat-generate"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "generation.max_new_tokens=0"),
        ({"temperature": -0.5}, "generation.temperature=-0.5"),
        ({"top_p": 0.0}, "generation.top_p=0.0"),
    ],
)
def test_generation_settings_are_checked(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**kwargs)


def test_generation_settings() -> None:
    assert GenerationSettings().kwargs() == {"do_sample": False, "num_beams": 1}
    sampled = GenerationSettings(temperature=0.7, top_p=0.9).kwargs()
    assert sampled == {"do_sample": True, "num_beams": 1, "temperature": 0.7, "top_p": 0.9}


@pytest.mark.slow
def test_an_anyres_checkpoint_answers_a_wide_image_as_eval(tmp_path: Path, data_dir: Path) -> None:
    from dc.data.synthetic import Obj, render
    from dc.pipeline import train

    overrides = [f"paths.output_dir={tmp_path / 'run'}", f"paths.data_dir={data_dir}", "run_name=anyres", "logger=[]"]
    cfg = compose_config(
        "train",
        [
            "debug=fast",
            "image=anyres",
            "data.max_length=1024",
            "trainer.max_steps=1",
            "trainer.enable_progress_bar=false",
        ]
        + overrides,
    )
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    chat = chat_from_config(
        compose_config("chat", [f"ckpt_path={ckpt}", f"generation.max_new_tokens={MAX_NEW_TOKENS}"])
    )
    assert chat.describe()["image"] == "AnyRes"
    wide = tmp_path / "wide.png"
    render([Obj("red", "circle", 3)], (144, 48)).save(wide)
    answer = chat.ask(chat.load_visual(wide), "What colour is the shape?").text
    model = chat.backend.model  # eval.py's path
    with Image.open(wide) as img:
        sample = model.sample("<image>\nWhat colour is the shape?", [img])
    assert sample["visual"][0].views > 1  # the base view and the crops
    assert answer == model.generate([sample], MAX_NEW_TOKENS)[0]


def test_the_web_handlers_without_a_browser(chat: Chat, trained: Trained, eval_answers, tmp_path: Path) -> None:
    """The page's event handlers as plain functions (no Gradio needed): what the browser test drives."""
    from dc.chat.web import WebChat

    web = WebChat(chat)
    (tmp_path / "notes.png").write_text("not an image")
    conversation, shown, picture, status = web.upload(str(tmp_path / "notes.png"))
    assert conversation.visual is None and shown == [] and picture is None
    assert status.startswith("error: cannot read notes.png as an image")
    question = trained.question(3, "colour")
    conversation, _, picture, status = web.upload(str(trained.image(question)))
    assert status == "loaded image eval_00003.png (48×48): ask a question" and picture.size == (240, 240)  # 5 x 48
    steps = list(web.ask("  ", conversation, MAX_NEW_TOKENS, 0.0, 1.0))
    assert [s[3] for s in steps] == ["error: empty question: type a question first"] and conversation.turns == []
    steps = list(web.ask(question["text"], conversation, MAX_NEW_TOKENS, 0.0, 1.0))
    assert all(s[3] == "answering…" for s in steps[:-1]) and steps[-1][3].startswith("answered (turn 1): ")
    answer = eval_answers[question["question_id"]]
    assert steps[-1][1] == [{"role": "user", "content": question["text"]}, {"role": "assistant", "content": answer}]
    bad = list(web.ask(question["text"], conversation, 0, 0.0, 1.0))
    assert bad[-1][3] == "error: generation.max_new_tokens=0 must be a positive integer"
    assert len(conversation.turns) == 2
    fresh, shown, status = web.reset(conversation)
    assert fresh.turns == [] and shown == [] and status == "new conversation: image eval_00003.png (48×48)"
