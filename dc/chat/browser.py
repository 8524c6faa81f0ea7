"""Drive the web demo in a real headless Chromium (Selenium): the browser tests and the docs screenshot use it.

    python -m dc.chat.browser --ckpt outputs/demo/finetune/checkpoints/last.ckpt \\
        --image data/synthetic/seed0_2000_4000_100/images/eval_00006.png \\
        --question "What colour is the shape?" --question "Where is the shape?" --out docs/chat_demo.png

(`make chat-screenshot`) starts the web demo on a free localhost port, opens it in headless Chromium, uploads the
image, asks each question in turn (one conversation), waits for each streamed answer, saves a screenshot and stops
the server.

Chromium and its driver come from the system packages (Debian: `apt-get install chromium chromium-driver`) and
Selenium from the `demo` extra; nothing is downloaded at run time (the driver path is given, so Selenium Manager
never runs). Chromium runs with a fresh profile and its background networking off, so it only talks to the demo.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def find_browser() -> tuple[str, str] | None:
    """(Chromium binary, chromedriver) found on PATH, or None when either is missing."""
    binary = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = next((p for p in map(shutil.which, DRIVERS) if p), None)
    return (binary, driver) if binary and driver else None


def free_port() -> int:
    """A TCP port nobody listens on right now (on localhost)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(overrides: list[str], port: int, log: Path, timeout: float = 300.0) -> subprocess.Popen:
    """Start `python -m dc.chat mode=web <overrides>` on 127.0.0.1:`port`; return once the page answers.

    Raises:
        RuntimeError: the server exited or did not answer within `timeout` seconds (with the end of its log).
    """
    cmd = [sys.executable, "-m", "dc.chat", "mode=web", "server.host=127.0.0.1", f"server.port={port}", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    root = Path(__file__).resolve().parents[2]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the web demo exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"the web demo did not answer on port {port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop a server started by `start_server` (terminate, then kill after 10 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_chromium(profile: Path, size: tuple[int, int] = (1280, 860)) -> Any:
    """A Selenium driver for headless Chromium with a fresh profile in `profile`.

    Raises:
        RuntimeError: Chromium or chromedriver is not installed (the message says how to install them).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if found is None:
        raise RuntimeError("no Chromium/chromedriver on PATH: apt-get install chromium chromium-driver (docs/chat.md)")
    binary, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--window-size={size[0]},{size[1]}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


class DemoPage:
    """The demo page in a browser: upload, ask, reset, read the status line and the answers.

    Args:
        driver: a Selenium WebDriver.
        url: the demo's address.
        timeout: how long to wait for the page or an answer, in seconds.
    """

    def __init__(self, driver: Any, url: str, timeout: float = 120.0) -> None:
        self.driver = driver
        self.url = url
        self.timeout = timeout
        self.seen: list[str] = []  # every distinct answer text observed while the last answer streamed

    def _css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise TimeoutError(f"{what} did not happen within {self.timeout:.0f} s (status: {self.status()!r})")

    def open(self) -> None:
        """Load the page and wait until the question box is there."""
        from selenium.common.exceptions import NoSuchElementException

        self.driver.get(self.url)

        def ready() -> bool:
            try:
                self._css("#question textarea")
                return True
            except NoSuchElementException:
                return False

        self._wait(ready, "the page loading")

    def status(self) -> str:
        """The status line."""
        try:
            return str(self._css("#status textarea").get_attribute("value"))
        except Exception:  # not rendered yet
            return ""

    def answers(self) -> list[str]:
        """The text of every answer in the conversation, in order."""
        from selenium.webdriver.common.by import By

        return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, "#chat [data-testid='bot']")]

    def _file_inputs(self) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]")

    def clear_upload(self) -> str:
        """Remove the uploaded file (the upload's Clear button); the status line once it says so."""
        if self._file_inputs():
            return self.status()  # nothing uploaded
        before = self.status()
        self._css("#upload button[aria-label='Clear']").click()
        self._wait(lambda: self.status() != before and bool(self._file_inputs()), "clearing the upload")
        return self.status()

    def upload(self, path: str | Path) -> str:
        """Upload a file (replacing the one there) and return the status line once it says `loaded ...` or
        `error: ...`.
        """
        self.clear_upload()
        before = self.status()
        self._file_inputs()[0].send_keys(str(Path(path).resolve()))
        self._wait(lambda: self.status() != before and self.status().startswith(("loaded", "error")), "the upload")
        return self.status()

    def ask(self, question: str) -> str:
        """Type `question`, press Send and return the status line once it says `answered ...` or `error: ...`.

        While the answer streams, every distinct text of the last answer is recorded in `seen`.
        """
        before, count = self.status(), len(self.answers())
        box = self._css("#question textarea")
        box.clear()
        box.send_keys(question)
        self._css("#send").click()
        self.seen = []

        def finished() -> bool:
            answers = self.answers()
            if len(answers) > count and (not self.seen or self.seen[-1] != answers[-1]):
                self.seen.append(answers[-1])
            status = self.status()
            if status == before:
                return False
            return status.startswith("error") or (status.startswith("answered") and len(answers) > count)

        self._wait(finished, "the answer")
        return self.status()

    def reset(self) -> str:
        """Press Reset and return the status line once it says `new conversation ...`."""
        before = self.status()
        self._css("#reset").click()
        self._wait(lambda: self.status() != before and self.status().startswith("new conversation"), "the reset")
        return self.status()


def screenshot(ckpt: str, image: str, questions: list[str], out: Path, overrides: list[str]) -> list[str]:
    """Serve `ckpt`, ask `questions` (one conversation) about `image` in headless Chromium, save the page to
    `out`; the answers.
    """
    work = Path(tempfile.mkdtemp(prefix="dc-chat-browser-"))
    port = free_port()
    server = start_server([f"ckpt_path={ckpt}", *overrides], port, work / "server.log")
    driver = None
    try:
        driver = start_chromium(work / "profile")
        page = DemoPage(driver, f"http://127.0.0.1:{port}/")
        page.open()
        page.upload(image)
        for question in questions:
            status = page.ask(question)
            if not status.startswith("answered"):
                raise RuntimeError(f"the demo did not answer {question!r}: {status}")
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        return page.answers()
    finally:
        if driver is not None:
            driver.quit()
        stop_server(server)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """`python -m dc.chat.browser --ckpt ... --image ... --question ... [--question ...] --out docs/chat_demo.png`."""
    parser = argparse.ArgumentParser(description="Screenshot the web demo answering questions about an image.")
    parser.add_argument("--ckpt", required=True, help="a dc checkpoint or an exported HF Llava directory")
    parser.add_argument("--image", required=True)
    parser.add_argument("--question", required=True, action="append", help="repeat for a conversation")
    parser.add_argument("--out", type=Path, default=Path("docs/chat_demo.png"))
    parser.add_argument("overrides", nargs="*", help="more configs/chat.yaml overrides (key=value)")
    args = parser.parse_args(argv)
    answers = screenshot(args.ckpt, args.image, args.question, args.out, args.overrides)
    for question, answer in zip(args.question, answers):
        print(f"{question} -> {answer}")
    print(f"screenshot: {args.out}")


if __name__ == "__main__":
    main()
