"""`data=llava_instruct` end to end: the config composes, the converter writes shards under DATA_ROOT, and
(`-m slow`) `dc.pipeline.train` trains the tiny model from the JSON layout and from the shards while bad records
are skipped and logged by `DataStatsCallback`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dc.data.to_shards import convert
from dc.pipeline import train

from data_helpers import BAD_FILES, BAD_RECORDS, good_records, image_bytes, interleave

PLANTED = {"missing_image": 1, "corrupt_image": 1, "too_long": 1}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def compose_cfg(data_root: Path, out: Path, *overrides: str):
    with initialize_config_dir(config_dir=os.fspath(CONFIGS), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "data=llava_instruct",
                f"paths.data_dir={data_root}",
                f"paths.output_dir={out}",
                "run_name=t",
                "data.batch_size=4",
                "data.num_workers=0",
                "data.max_length=256",
                "stage.global_batch_size=4",
                "trainer.max_epochs=1",
                "trainer.enable_progress_bar=false",
                "logger=csv",
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("DATA_ROOT")
    inst = root / "LLaVA-Instruct"
    (inst / "coco/train2017").mkdir(parents=True)
    records = good_records(4, 2)  # few records: each training step of even the tiny model costs ~1 s here
    for k, rec in enumerate(records):
        if "image" in rec:
            rec["image"] = f"coco/train2017/{k:012d}.jpg"
            (inst / rec["image"]).write_bytes(image_bytes(k))
    for name, data in BAD_FILES.items():
        (inst / name).write_bytes(data)
    bad = [rec for reason, rec in BAD_RECORDS if reason in PLANTED]
    (inst / "llava_v1_5_mix665k.json").write_text(json.dumps(interleave(records, bad)))
    convert(
        inst / "llava_v1_5_mix665k.json",
        inst,
        root / "shards/llava_instruct",
        max_size_mb=1,
        max_count=6,
        progress=False,
    )
    return root


def test_config_paths_follow_data_root(data_root, tmp_path):
    cfg = compose_cfg(data_root, tmp_path)
    assert cfg.data.train_file == f"{data_root}/LLaVA-Instruct/llava_v1_5_mix665k.json"
    assert cfg.data.shards == f"{data_root}/shards/llava_instruct"
    assert cfg.data.group_by_modality_length and cfg.data.seed == cfg.seed


@pytest.mark.slow  # 10-30 s per format on the shared 2-core box (whole pipeline: model, callbacks, checkpoint)
@pytest.mark.parametrize("fmt", ["json", "shards"])
def test_train_runs_on_real_layout_with_bad_records(data_root, tmp_path, fmt):
    cfg = compose_cfg(data_root, tmp_path, f"data.format={fmt}")
    metrics, objs = train(cfg)
    assert objs["trainer"].global_step > 0 and "train/loss" in metrics
    # JSON: every planted record is skipped at load. Shards: the converter already dropped the image failures;
    # the too-long record needs the tokenizer to detect, so the loader skips it.
    expected = PLANTED if fmt == "json" else {"too_long": 1}
    assert metrics["data/skipped_total"] == sum(expected.values())
    for reason, n in expected.items():
        assert metrics[f"data/skipped/{reason}"] == n
    assert 0 <= metrics["data/padding_frac_epoch"] < 1


@pytest.mark.parametrize("data", ["synthetic", "llava_instruct", "llava_pretrain"])
def test_the_generic_data_keys_are_set_without_a_plus(data: str, tmp_path: Path) -> None:
    """docs/data.md's generic keys (`strict`, `overlength`, ...) exist in every data config: setting them on the
    command line needs no `+`, and they reach the data module."""
    from dc.pipeline import build_datamodule

    from dc_testing import compose_config

    overrides = ["data.strict=true", "data.overlength=skip", "data.max_length=77", "data.val_fraction=0.25"]
    cfg = compose_config("train", ["debug=fast", f"data={data}", f"paths.data_dir={tmp_path}", *overrides])
    dm = build_datamodule(cfg)
    assert (dm.strict, dm.overlength, dm.max_length, dm.val_fraction) == (True, "skip", 77, 0.25)
    assert (dm.builder.overlength, dm.builder.max_length) == ("skip", 77)
