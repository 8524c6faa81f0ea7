"""Bad records never stop a run: planted among good ones, each is skipped and counted under its reason, in the
JSON path and the shard path, through the real DataLoader with worker processes; `strict` raises instead."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dc.data.datamodule import LlavaDataModule
from dc.data.records import BadRecordError
from dc.data.stats import DataStats

from data_helpers import (
    BAD_FILES,
    BAD_RECORDS,
    MAX_LENGTH,
    good_records,
    image_bytes,
    interleave,
    planted_counts,
    shard_sample,
    write_layout,
    write_tar,
)


def datamodule(tokenizer, template, visual, **kw) -> LlavaDataModule:
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_workers", 2)
    return LlavaDataModule(
        tokenizer=tokenizer,
        template=template,
        visual=visual,
        max_length=MAX_LENGTH,
        group_by_modality_length=True,
        **kw,
    )


def run_epoch(dm: LlavaDataModule) -> tuple[DataStats, list]:
    dm.setup()
    stats, ids = DataStats(), []
    for batch in dm.train_dataloader():
        stats.update(batch)
        ids.extend(batch["ids"])
        assert batch["input_ids"].shape[0] > 0
        assert batch["input_ids"].shape[1] <= MAX_LENGTH
    return stats, ids


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_path_skips_and_counts_every_bad_kind(tmp_path, tokenizer, template, visual, suffix):
    good = good_records(30, 10)
    records = interleave(good, [rec for _, rec in BAD_RECORDS])
    extra = {}
    if suffix == ".jsonl":
        path, folder = write_layout(tmp_path, records, BAD_FILES, name="data.jsonl")
        lines = path.read_text().splitlines()
        lines.insert(7, '{"id": "bad-json", "conversations": [')  # an unparsable line
        path.write_text("\n".join(lines) + "\n")
        extra = {"bad_json": 1}
    else:
        path, folder = write_layout(tmp_path, records, BAD_FILES)
    dm = datamodule(tokenizer, template, visual, train_file=str(path), image_folder=str(folder))
    stats, ids = run_epoch(dm)
    assert stats.skipped == planted_counts(extra)
    assert set(ids) == {r["id"] for r in good}  # every good record trained on, no bad one


def test_shard_path_skips_and_counts_every_bad_kind(tmp_path, tokenizer, template, visual):
    good = good_records(30, 10)
    samples = []
    for k, rec in enumerate(good):
        samples.append(shard_sample(f"{k:09d}", rec, image_bytes(k) if "image" in rec else None))
    bad = []
    for k, (_, rec) in enumerate(BAD_RECORDS):
        key = f"{1000 + k:09d}"
        name = rec.get("image") if isinstance(rec, dict) else None
        bad.append(shard_sample(key, rec, BAD_FILES.get(name) if name else None))
    bad.append({"__key__": "000002000", "json": b'{"id": "bad-json", "conv'})  # unparsable json member
    bad.append({"__key__": "000002001", "jpg": image_bytes(9)})  # no json member at all
    mixed = interleave(samples, bad)
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    cuts = [0, 13, 20, 38, len(mixed)]  # 4 shards of uneven size
    for n, (a, b) in enumerate(zip(cuts, cuts[1:])):
        write_tar(shard_dir / f"part-{n:06d}.tar", mixed[a:b])
    dm = datamodule(
        tokenizer,
        template,
        visual,
        format="shards",
        shards=str(shard_dir / "part-{000000..000003}.tar"),
        shuffle_buffer=8,
    )
    stats, ids = run_epoch(dm)
    assert stats.skipped == planted_counts({"bad_json": 1, "malformed_record": 1})
    assert sorted(ids) == sorted(r["id"] for r in good)  # one pass: each good record exactly once


def test_truncated_shard_does_not_stop_the_run(tmp_path, tokenizer, template, visual):
    good = good_records(12, 0)
    samples = [shard_sample(f"{k:09d}", r, image_bytes(k, size=(300, 300), fmt="PNG")) for k, r in enumerate(good)]
    write_tar(tmp_path / "a-000000.tar", samples[:6])
    write_tar(tmp_path / "a-000001.tar", samples[6:])
    data = (tmp_path / "a-000001.tar").read_bytes()
    (tmp_path / "a-000001.tar").write_bytes(data[: len(data) // 2 - 700])  # cut inside a member
    dm = datamodule(tokenizer, template, visual, format="shards", shards=str(tmp_path / "*.tar"), num_workers=0)
    stats, ids = run_epoch(dm)
    # One read error for the cut shard; the sample it cut through lost its image.
    assert stats.skipped == {"bad_shard": 1, "missing_image": 1}
    assert {r["id"] for r in good[:9]} == set(ids)


@pytest.mark.parametrize("fmt", ["json", "shards"])
def test_strict_raises_naming_the_record(tmp_path, tokenizer, template, visual, fmt):
    good = good_records(6, 0)
    bad = {"id": "bad-missing", "image": "does-not-exist.jpg", "conversations": good[0]["conversations"]}
    records = good[:3] + [bad] + good[3:]
    path, folder = write_layout(tmp_path, records)
    if fmt == "json":
        kw = {"train_file": str(path), "image_folder": str(folder)}
    else:
        write_tar(
            tmp_path / "s-000000.tar",
            [
                shard_sample(
                    f"{k:09d}", r, (folder / r["image"]).read_bytes() if (folder / r["image"]).exists() else None
                )
                for k, r in enumerate(records)
            ],
        )
        kw = {"format": "shards", "shards": str(tmp_path / "s-000000.tar")}
    dm = datamodule(tokenizer, template, visual, strict=True, num_workers=0, **kw)
    with pytest.raises(BadRecordError, match="bad-missing.*missing_image"):
        run_epoch(dm)


def test_unparsable_json_file_is_an_error_naming_it(tmp_path, tokenizer, template, visual):
    path = tmp_path / "broken.json"
    path.write_text('[{"id": 1, "conversations": [}')
    dm = datamodule(tokenizer, template, visual, train_file=str(path), image_folder=str(tmp_path))
    with pytest.raises(ValueError, match="broken.json"):
        dm.setup()


def test_whole_batch_of_bad_records_is_refilled_and_counted(tmp_path, tokenizer, template, visual):
    records = [rec for _, rec in BAD_RECORDS] + good_records(4, 0)
    path, folder = write_layout(tmp_path, records, BAD_FILES)
    dm = datamodule(tokenizer, template, visual, train_file=str(path), image_folder=str(folder), num_workers=0)
    dm.setup()
    items = dm.train_set[list(range(len(BAD_RECORDS)))]  # a batch of only bad records
    batch = dm.collate(items)
    assert batch["input_ids"].shape[0] == 1 and batch["ids"][0].startswith("good")
    assert Counter(batch["skipped"]) == planted_counts()


def test_skipped_file_is_not_touched(tmp_path, tokenizer, template, visual):
    """Nothing already written is damaged by a bad record: the corrupt file and the shards stay byte-identical."""
    records = good_records(3, 0) + [BAD_RECORDS[8][1]]
    path, folder = write_layout(tmp_path, records, BAD_FILES)
    before = {p: p.read_bytes() for p in folder.iterdir()} | {path: path.read_bytes()}
    dm = datamodule(tokenizer, template, visual, train_file=str(path), image_folder=str(folder), num_workers=0)
    run_epoch(dm)
    assert {p: p.read_bytes() for p in before} == before
    assert json.loads(path.read_text())[3]["id"] == "bad-corrupt"
    assert Path(folder / "bad-corrupt.jpg").exists()


def test_a_train_file_without_records_is_refused_naming_it(tokenizer, template, visual, tmp_path: Path) -> None:
    from dc.utils.errors import ConfigError

    path, folder = write_layout(tmp_path, [])
    dm = datamodule(tokenizer, template, visual, train_file=str(path), image_folder=str(folder), num_workers=0)
    with pytest.raises(ConfigError, match=rf"data.train_file={path}: the file holds no records"):
        dm.setup("fit")
