"""Helpers of the chat tests: the test checkpoint's questions, running `python -m dc.chat` on a script, reading
the answers out of its transcript."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dc_testing import ROOT

MAX_NEW_TOKENS = 8  # the synthetic benchmark's budget, so chat and eval.py generate the same length


@dataclass(frozen=True)
class Trained:
    """The test checkpoint, its synthetic folder and its held-out questions."""

    ckpt: Path
    root: Path
    questions: list[dict]

    def image(self, question: dict) -> Path:
        return self.root / "images" / question["image"]

    def question(self, image_index: int, category: str) -> dict:
        name = f"eval_{image_index:05d}.png"
        return next(q for q in self.questions if q["image"] == name and q["category"] == category)


def run_cli(
    args: list[str], script: str, timeout: int = 300, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m dc.chat <args>` with `script` on its standard input (`extra_env` added to the environment)."""
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    cmd = [sys.executable, "-m", "dc.chat", *args]
    return subprocess.run(cmd, cwd=ROOT, input=script, capture_output=True, text=True, timeout=timeout, env=env)


def answers_in(stdout: str) -> list[str]:
    """The answers of a transcript: the text after each `model> ` up to the next prompt or message line."""
    answers: list[str] = []
    inside = False
    for line in stdout.split("\n"):
        if line.startswith("model> "):
            answers.append(line[len("model> ") :])
            inside = True
        elif inside and not line.startswith(("you> ", "[", "error: ")):
            answers[-1] += "\n" + line
        else:
            inside = False
    return [a.strip() for a in answers]


def cli_args(ckpt: Path | str, image: Path) -> list[str]:
    """The overrides of the scripted runs: the model, the first image, eval.py's answer length."""
    return [f"ckpt_path={ckpt}", f"image={image}", f"generation.max_new_tokens={MAX_NEW_TOKENS}"]


@dataclass(frozen=True)
class Scripted:
    """One scripted terminal chat: the questions asked (in order, with their image) and the answers printed."""

    questions: list[tuple[dict, Path]]
    answers: list[str]
    stdout: str


def scripted_conversation(trained: Trained) -> tuple[str, list[tuple[dict, Path]]]:
    """Two turns about image 0, /reset and the second question again, /image 1 and a question about it."""
    q0, q1 = trained.question(0, "colour"), trained.question(0, "shape")
    q2 = trained.question(1, "position")
    script = "\n".join(
        [q0["text"], q1["text"], "/reset", q1["text"], f"/image {trained.image(q2)}", q2["text"], "/quit", ""]
    )
    asked = [(q0, trained.image(q0)), (q1, trained.image(q0)), (q1, trained.image(q0)), (q2, trained.image(q2))]
    return script, asked
