"""The recipe: each stage's config is the recipe config with its patch merged in; a 2-point sweep runs stage 1 →
stage 2 (from its own stage-1 connector) → the benchmark end to end, and `collect` turns exactly the points' own
results files into the table. Each step records the settings it was made with: a re-run with other settings is
refused (nothing touched) unless `+overwrite=true`, which redoes exactly the stale steps; runtime-only keys do not
count; a prepared tower is named by its settings and pinned as an absolute path."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dc.experiments.collect import collect, scored_on_this_model
from dc.experiments.recipe import (
    _changes,
    _prepare,
    benchmark_config,
    is_runtime_override,
    stage_config,
    stale_steps,
    step_settings,
)
from dc.utils.instantiate import trusted_prefixes

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


def test_settings_leave_out_runtime_keys_and_name_what_changed(tmp_path: Path) -> None:
    base = [f"paths.output_dir={tmp_path}", "connector=sci"]
    cfg = compose_config("recipe", base)
    settings = step_settings(cfg, tmp_path)
    assert list(settings) == ["pretrain", "finetune", "eval/synthetic"]
    assert settings["finetune"]["stage.lr"] == cfg.finetune.stage.lr and settings["pretrain"]["seed"] == cfg.seed
    assert "trainer.enable_progress_bar" not in settings["pretrain"] and "run_name" not in settings["finetune"]
    runtime = [
        "trainer.enable_progress_bar=false",
        "data.num_workers=2",
        "+finetune.trainer.log_every_n_steps=1",
        "eval.batch_size=3",
        "callbacks.checkpoint.every_n_train_steps=7",
        "logger=wandb",
    ]
    assert step_settings(compose_config("recipe", [*base, *runtime]), tmp_path) == settings
    # a callback of the user's own may change the result: it is a setting (dc's own only observe the run)
    assert not is_runtime_override("+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging")
    # keys added to the configs since sweeps recorded settings: left out at the value the code used before them, so
    # a folder recorded earlier (without them) stays current; another value is a change
    assert not any(k.startswith(("data.strict", "data.overlength")) for s in settings.values() for k in s)
    strict = step_settings(compose_config("recipe", [*base, "+pretrain.data.strict=true"]), tmp_path)
    assert _changes(settings["pretrain"], strict["pretrain"]) == ["data.strict: unset -> True"]
    assert all(is_runtime_override(o) for o in [*runtime, "+overwrite=true", "pretrain.data.num_workers=4"])

    changed = ["finetune.stage.lr=0.5", "limit=7", "+pretrain.trainer.max_steps=3"]
    assert not any(is_runtime_override(o) for o in changed)
    other = step_settings(compose_config("recipe", [*base, *changed]), tmp_path)
    assert _changes(settings["pretrain"], other["pretrain"]) == ["trainer.max_steps: -1 -> 3"]
    # each later step names the settings of the step it is made from (written out: sha256 of the sorted JSON)
    made_from = hashlib.sha256(json.dumps(other["pretrain"], sort_keys=True).encode()).hexdigest()[:12]
    assert other["finetune"]["made_from.pretrain"] == made_from != settings["finetune"]["made_from.pretrain"]
    assert _changes(settings["finetune"], other["finetune"]) == [
        f"made_from.pretrain: {settings['finetune']['made_from.pretrain']!r} -> {made_from!r}",
        f"stage.lr: {cfg.finetune.stage.lr!r} -> 0.5",
    ]
    assert _changes(settings["eval/synthetic"], other["eval/synthetic"]) == [
        "benchmark.limit: None -> 7",
        "limit: None -> 7",
        f"made_from.finetune: {settings['eval/synthetic']['made_from.finetune']!r} -> "
        f"{other['eval/synthetic']['made_from.finetune']!r}",
    ]


def test_a_redo_cut_short_leaves_the_later_steps_stale(tmp_path: Path) -> None:
    """Stage 1 redone with new settings, then the job stopped before stage 2 was redone: the next run (same
    command) still finds stage 2 and the benchmark stale, through the digest of stage 1 they were made from."""
    job = tmp_path / "job"
    base = [f"paths.output_dir={job}"]
    old = step_settings(compose_config("recipe", base), job)
    for step, settings in old.items():  # a finished point
        (job / step).mkdir(parents=True)
        (job / step / "settings.json").write_text(json.dumps({"settings": settings}))
        (job / step / ("metrics.json" if step in ("pretrain", "finetune") else "synthetic_results.json")).write_text(
            "{}"
        )
    assert stale_steps(job, old) == ([], {})
    new = step_settings(compose_config("recipe", [*base, "pretrain.stage.lr=0.5"]), job)
    assert stale_steps(job, new)[0] == ["pretrain", "finetune", "eval/synthetic"]
    (job / "pretrain" / "settings.json").write_text(json.dumps({"settings": new["pretrain"]}))  # stage 1 redone
    stale, changes = stale_steps(job, new)
    assert stale == list(changes) == ["finetune", "eval/synthetic"]  # the chain: stage 2, then its benchmark
    assert changes["finetune"][0].startswith("made_from.pretrain: ")
    # collect leaves out a benchmark scored on another model than stage 2 now holds
    (job / "finetune" / "settings.json").write_text(json.dumps({"settings": new["finetune"]}))  # stage 2 redone
    assert not scored_on_this_model(job, job / "eval" / "synthetic")
    (job / "eval" / "synthetic" / "settings.json").write_text(json.dumps({"settings": new["eval/synthetic"]}))
    assert scored_on_this_model(job, job / "eval" / "synthetic")


def test_prepared_tower_is_named_by_its_settings_and_pinned_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = ["experiment=table1_layers", "prepare.encoder.steps=1", "prepare.encoder.batch_size=2"]
    cfg = compose_config("recipe", [*overrides, "prepare.encoder.out=enc/tower", f"paths.output_dir={tmp_path}/job"])
    assert stage_config(cfg, "pretrain", tmp_path / "p").encoder.model.pretrained == "enc/tower"  # as configured
    record: dict = {"wall_s": {}}
    _prepare(cfg, trusted_prefixes(None), record)
    (tower,) = [p for p in (tmp_path / "enc").iterdir() if not p.name.startswith(".")]
    assert tower.name.startswith("tower-") and (tower / "DONE").exists() and "prepare/encoder" in record["wall_s"]
    for step in ("pretrain", "finetune"):  # what the stages (and so their checkpoints) load, from any folder
        assert stage_config(cfg, step, tmp_path / step).encoder.model.pretrained == str(tower.resolve())
    # other proxy settings: another tower beside it, the first one left for the checkpoints that name it
    cfg2 = compose_config("recipe", [*overrides, "prepare.encoder.out=enc/tower", "prepare.encoder.seed=1"])
    _prepare(cfg2, trusted_prefixes(None), record)
    assert len([p for p in (tmp_path / "enc").iterdir() if not p.name.startswith(".")]) == 2
    assert Path(cfg2.prepare.encoder.out) != tower.resolve() and (tower / "DONE").exists()


def _run_sweep(sweep: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "dc.experiments.recipe", "-m", *args, *TINY]
    cmd += [f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _run_point(job: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "dc.experiments.recipe", *args, *TINY]
    cmd += [f"paths.data_dir={data_dir}", f"hydra.run.dir={job}"]
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
    # (with a runtime-only change: not a change of settings)
    again = _run_sweep(sweep, data_dir, "connector=mlp,dci", "seed=3", "trainer.log_every_n_steps=1")
    assert again.returncode == 0, again.stderr[-3000:]
    for point in points:
        after = json.loads((point / "point.json").read_text())
        assert after["status"] == "ok" and after["metrics"] == before[point]["metrics"]
        assert (point / "finetune" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamps[point]
        assert after["wall_s"]["finetune"] >= before[point]["wall_s"]["finetune"]  # time summed over attempts

    # other settings: every point is refused (nothing touched), and a refused point does not end the sweep
    records = {p: (p / "point.json").read_bytes() for p in points}
    refused = _run_sweep(sweep, data_dir, "connector=mlp,dci", "seed=3", "limit=2")
    assert refused.returncode == 1 and "holds results made with other settings" in refused.stderr
    for point in points:
        assert "limit=2" in (point / ".hydra" / "overrides.yaml").read_text()  # Hydra started this point too
        assert (point / "point.json").read_bytes() == records[point]


def test_rerun_with_other_settings_is_refused_and_overwrite_redoes_the_stale_steps(
    tmp_path: Path, data_dir: Path
) -> None:
    job = tmp_path / "point"
    first = _run_point(job, data_dir, "connector=mlp", "seed=3")
    assert first.returncode == 0, first.stderr[-3000:]
    made = {s: json.loads((job / s / "settings.json").read_text())["settings"] for s in ("pretrain", "finetune")}
    assert made["finetune"]["trainer.max_steps"] == 2 and "stage.lr" in made["finetune"]
    assert json.loads((job / "eval" / "synthetic" / "settings.json").read_text())["settings"]["limit"] is None
    s1, s2 = job / "pretrain" / "checkpoints" / "last.ckpt", job / "finetune" / "checkpoints" / "last.ckpt"
    stamps = (s1.stat().st_mtime_ns, s2.stat().st_mtime_ns)
    point = (job / "point.json").read_bytes()

    changed = ("connector=mlp", "seed=3", "finetune.stage.lr=0.5", "limit=1")
    refused = _run_point(job, data_dir, *changed)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {job} holds results made with other settings")
    assert f"finetune (stage.lr: {made['finetune']['stage.lr']!r} -> 0.5)" in line
    # the benchmark: its own change, and the stage 2 it was scored on (digest of that stage's settings) changed
    assert "eval/synthetic (benchmark.limit: None -> 1, limit: None -> 1, made_from.finetune: '" in line
    assert "pretrain (" not in line
    assert "add overwrite=true to redo finetune, eval/synthetic" in line
    # nothing touched: the results and the record of what they were made with
    assert (job / "point.json").read_bytes() == point and (s1.stat().st_mtime_ns, s2.stat().st_mtime_ns) == stamps

    redone = _run_point(job, data_dir, *changed, "overwrite=true")
    assert redone.returncode == 0, redone.stderr[-3000:]
    assert s1.stat().st_mtime_ns == stamps[0] and s2.stat().st_mtime_ns != stamps[1]  # stage 1 was still good
    assert json.loads((job / "finetune" / "settings.json").read_text())["settings"]["stage.lr"] == 0.5
    results = json.loads((job / "eval" / "synthetic" / "synthetic_results.json").read_text())["results"]
    assert results["synthetic"]["counts"]["answered"] == 1  # limit=1, not the 8 answers of the first run
    record = json.loads((job / "point.json").read_text())
    assert record["status"] == "ok" and "finetune.stage.lr=0.5" in record["overrides"]
    assert record["metrics"]["synthetic/accuracy"] == results["synthetic"]["metrics"]["accuracy"]


def test_an_unset_environment_variable_is_named_by_key(tmp_path: Path) -> None:
    from dc.experiments.recipe import stage_config
    from dc.utils.errors import ConfigError

    cfg = compose_config("recipe", [f"paths.output_dir={tmp_path}", "paths.data_dir=${oc.env:DC_TEST_UNSET}"])
    with pytest.raises(ConfigError, match=r"^pretrain: paths.data_dir=\$\{oc.env:DC_TEST_UNSET\}: cannot be resolved"):
        stage_config(cfg, "pretrain", tmp_path / "pretrain")
