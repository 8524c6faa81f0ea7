"""The recipe: each stage's config is the recipe config with its patch merged in; a 2-point sweep runs stage 1 →
stage 2 (from its own stage-1 connector) → the benchmark end to end, and `collect` turns exactly the points' own
results files into the table."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from dc.experiments.collect import collect
from dc.experiments.recipe import benchmark_config, stage_config

from dc_testing import ROOT, compose_config
from experiment_helpers import TINY


def test_stage_configs_are_the_recipe_with_each_patch(tmp_path: Path) -> None:
    cfg = compose_config(
        "recipe",
        [f"paths.output_dir={tmp_path}", "connector=sci", "+pretrain.data.batch_size=8", "finetune.stage.lr=0.5"],
    )
    s1 = stage_config(cfg, "pretrain", tmp_path / "pretrain")
    s2 = stage_config(cfg, "finetune", tmp_path / "finetune", init_from=tmp_path / "pretrain" / "last.ckpt")
    assert s1.stage.name == "pretrain" and s1.stage.template._target_.endswith("Plain")
    assert s1.data.batch_size == 8 and s2.data.batch_size == cfg.data.batch_size  # the patch is per stage
    assert s1.data.train_file.endswith("/pretrain.json") and s2.data.train_file.endswith("/instruct.json")
    assert s2.stage.name == "finetune" and s2.stage.lr == 0.5
    assert s2.stage.init_connector_from == str(tmp_path / "pretrain" / "last.ckpt")
    assert s1.paths.output_dir == str(tmp_path / "pretrain") and s1.ckpt_path == "auto"
    assert s1.connector._target_.endswith("SparseChannelIntegration") and s1.run_name.endswith("-pretrain")
    for key in ("prepare", "pretrain", "finetune", "benchmarks", "eval"):
        assert key not in s1 and key not in s2
    ev = benchmark_config(cfg, "synthetic", tmp_path / "x.ckpt", tmp_path / "eval")
    assert ev.benchmark._target_.endswith("SyntheticQA") and ev.ckpt_path == str(tmp_path / "x.ckpt")
    assert ev.paths.output_dir == str(tmp_path / "eval") and ev.benchmark.limit is None


def _run_sweep(sweep: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "dc.experiments.recipe", "-m", *args, *TINY]
    cmd += [f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_two_point_sweep_train_eval_collect(tmp_path: Path, data_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _run_sweep(sweep, data_dir, "connector=mlp,dci", "seed=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = sorted(p for p in sweep.iterdir() if (p / "point.json").exists())
    assert [p.name for p in points] == ["0-mlp-tiny_clip-tiny-s3", "1-dci-tiny_clip-tiny-s3"]
    for point, connector in zip(points, ("mlp", "dci")):
        record = json.loads((point / "point.json").read_text())
        assert record["status"] == "ok" and record["fields"]["connector"] == connector
        assert record["fields"]["seed"] == 3 and record["fields"]["visual_tokens"] == 9  # 3×3 patches, CLS dropped
        assert (record["fields"].get("groups") is not None) == (connector == "dci")
        # stage 2 started from this point's own stage-1 connector
        s2 = torch.load(point / "finetune" / "checkpoints" / "last.ckpt", weights_only=True)
        assert s2["hyper_parameters"]["stage"]["init_connector_from"] == str(point / "pretrain/checkpoints/last.ckpt")
        results = json.loads((point / "eval" / "synthetic" / "synthetic_results.json").read_text())
        assert record["metrics"]["synthetic/accuracy"] == results["results"]["synthetic"]["metrics"]["accuracy"]

    collected = collect(sweep, metrics=["synthetic/accuracy", "synthetic/accuracy_count"])
    md = (sweep / "table.md").read_text()
    for point, row in zip(points, collected["table"]["rows"]):
        metrics = json.loads((point / "eval" / "synthetic" / "synthetic_results.json").read_text())["results"]
        expected = metrics["synthetic"]["metrics"]
        connector = row["labels"]["connector"]
        assert connector in point.name
        for key in ("accuracy", "accuracy_count"):
            assert row["cells"][f"synthetic/{key}"]["mean"] == statistics.fmean([expected[key]])
        cells = " | ".join(f"{expected[k]:.1f}" for k in ("accuracy", "accuracy_count"))
        assert f"| {connector} | " in md and f" | 9 | {cells} | 1/1 |" in md
    assert collected["problems"] == []
    assert collected["paths"]["png"] is None or collected["paths"]["png"].exists()

    # the same command again (a requeued sweep): finished stages and benchmarks are read back, nothing retrains
    stamps = {p: (p / "finetune" / "checkpoints" / "last.ckpt").stat().st_mtime_ns for p in points}
    before = {p: json.loads((p / "point.json").read_text()) for p in points}
    again = _run_sweep(sweep, data_dir, "connector=mlp,dci", "seed=3")
    assert again.returncode == 0, again.stderr[-3000:]
    for point in points:
        after = json.loads((point / "point.json").read_text())
        assert after["status"] == "ok" and after["metrics"] == before[point]["metrics"]
        assert (point / "finetune" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamps[point]
        assert after["wall_s"]["finetune"] >= before[point]["wall_s"]["finetune"]  # time summed over attempts
