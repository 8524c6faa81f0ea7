"""The web demo on localhost, driven in a real headless Chromium (Selenium) on the tiny test checkpoint.

Upload a held-out image, ask its question, read the streamed answer from the page: it equals the terminal chat's
answer (and so eval.py's), and the follow-up question continues the conversation exactly as the terminal chat did.
Bad input (a file that is not an image, an empty question) shows a message and the page keeps answering.

Marked `browser`; skipped when Gradio or Selenium (the `demo` extra) or Chromium and chromedriver (system packages)
are missing: `pip install -e '.[demo]'` and `apt-get install chromium chromium-driver` (docs/chat.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the web demo needs the demo extra: pip install -e '.[demo]'")
pytest.importorskip("selenium", reason="the browser tests need the demo extra: pip install -e '.[demo]'")

from dc.chat.browser import DemoPage, find_browser, free_port, start_chromium, start_server, stop_server  # noqa: E402

from chat_helpers import MAX_NEW_TOKENS, Scripted, Trained  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        find_browser() is None, reason="no chromium/chromedriver on PATH: apt-get install chromium chromium-driver"
    ),
]


@pytest.fixture(scope="module")
def page(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoPage]:
    """The demo serving the test checkpoint on a free localhost port, open in headless Chromium."""
    work = tmp_path_factory.mktemp("web")
    port = free_port()
    server = start_server(
        [f"ckpt_path={trained.ckpt}", f"generation.max_new_tokens={MAX_NEW_TOKENS}"], port, work / "log"
    )
    driver = None
    try:
        driver = start_chromium(work / "profile")
        demo = DemoPage(driver, f"http://127.0.0.1:{port}/")
        demo.open()
        yield demo
    finally:
        if driver is not None:
            driver.quit()
        stop_server(server)


def test_the_page_answers_like_the_terminal_chat(page: DemoPage, cli_run: Scripted, tmp_path: Path) -> None:
    (q0, image), (q1, _), _, _ = cli_run.questions
    info = page.driver.find_element("css selector", "#model-info").text
    assert "DenseChannelIntegration" in info and "tiny_clip" in info and "last.ckpt" in info
    assert page.upload(image) == "loaded image eval_00000.png (48×48): ask a question"
    assert page.ask(q0["text"]).startswith("answered (turn 1): ")
    assert page.answers() == [cli_run.answers[0]]
    assert page.seen and page.seen[-1] == cli_run.answers[0]  # read while it streamed in
    assert page.ask(q1["text"]).startswith("answered (turn 2): ")  # the conversation goes on
    assert page.answers() == cli_run.answers[:2]
    shot = tmp_path / "page.png"
    assert page.driver.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.reset().startswith("new conversation: image eval_00000.png")
    assert page.answers() == []


def test_bad_input_gets_a_message_and_the_page_goes_on(page: DemoPage, cli_run: Scripted, tmp_path: Path) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    assert page.upload(notes).startswith("error: cannot read notes.png as an image")
    assert page.ask("   ") == "error: empty question: type a question first"
    (q0, image), *_ = cli_run.questions
    assert page.upload(image).startswith("loaded image eval_00000.png")
    assert page.ask(q0["text"]).startswith("answered (turn 1): ")
    assert page.answers() == [cli_run.answers[0]]
