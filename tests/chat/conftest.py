"""Fixtures of the chat tests: a tiny checkpoint trained here, eval.py's answers for it, and one scripted run of
the terminal chat through its standard input (shared by the CLI and the browser tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dc.pipeline import evaluate, train

from chat_helpers import Scripted, Trained, answers_in, cli_args, run_cli, scripted_conversation
from dc_testing import compose_config


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Trained:
    """One epoch of the fast synthetic set at the demo's LLM learning rate: a tiny model that answers in words."""
    out = tmp_path_factory.mktemp("chat-run")
    cfg = compose_config(
        "train",
        [
            "debug=fast",
            f"paths.output_dir={out}",
            f"paths.data_dir={data_dir}",
            "run_name=chat",
            "logger=[]",
            "trainer.enable_progress_bar=false",
            "trainer.max_steps=16",
            "stage.lr=1e-3",
        ],
    )
    train(cfg)
    root = Path(cfg.data.image_folder).parent
    questions = [json.loads(line) for line in (root / "eval.jsonl").read_text().splitlines()]
    return Trained(out / "checkpoints" / "last.ckpt", root, questions)


@pytest.fixture(scope="session")
def eval_answers(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """eval.py's answers on the held-out questions, by question id (what `eval.py ckpt_path=... benchmark.root=...`
    writes to synthetic_answers.jsonl)."""
    out = tmp_path_factory.mktemp("chat-eval")
    cfg = compose_config(
        "eval",
        [
            f"ckpt_path={trained.ckpt}",
            f"benchmark.root={trained.root}",
            f"paths.output_dir={out}",
            "benchmark.blank_control=false",
            "runtime.accelerator=cpu",
        ],
    )
    evaluate(cfg)
    lines = (out / "synthetic_answers.jsonl").read_text().splitlines()
    return {a["id"]: a["text"] for a in map(json.loads, lines)}


@pytest.fixture(scope="session")
def cli_run(trained: Trained) -> Scripted:
    """The scripted conversation through `python -m dc.chat`'s standard input."""
    script, asked = scripted_conversation(trained)
    result = run_cli(cli_args(trained.ckpt, trained.image(asked[0][0])), script)
    assert result.returncode == 0, result.stderr[-3000:]
    return Scripted(asked, answers_in(result.stdout), result.stdout)
