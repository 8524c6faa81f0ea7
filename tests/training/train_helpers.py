"""Helpers for the training tests: run `train.py` in a subprocess, read checkpoints, compare state dicts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = str(ROOT / "configs")
# One intra-op thread: on a shared 2-core box two threads per process are several times slower (an AdamW step
# on 2M parameters: 0.27 s vs 0.03 s under load), and the in-process and subprocess runs must use the same count
# for bit-identical results.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def single_thread():
    """Run the test with one torch thread (restored afterwards). Import it into a test module to use it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


from dc_testing import compose_config  # noqa: E402,F401 - one composition helper for every test


def run_train_py(overrides: list[str], run_dir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python train.py <overrides> hydra.run.dir=<run_dir>` from the repo root (no wandb, offline hub)."""
    env = {
        **os.environ,
        **THREAD_ENV,
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def load_ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def flatten_optimizer(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Optimizer state tensors (exp_avg, exp_avg_sq, step) keyed by param index and name."""
    return {f"{i}.{name}": torch.as_tensor(v) for i, s in state["state"].items() for name, v in s.items()}
