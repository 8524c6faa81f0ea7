"""The converter: size/count caps, dot-free keys, skipped records reported, atomic and deterministic re-runs."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from dc.data import to_shards
from dc.data.shards import resolve_shards
from dc.data.to_shards import convert, main

from data_helpers import good_records, image_bytes, qa


def noisy_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (24 + seed % 17, 30, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()  # 2-4 KB, incompressible


@pytest.fixture
def layout(tmp_path):
    records = good_records(24, 6, prefix="ok")
    folder = tmp_path / "images"
    folder.mkdir()
    for k, rec in enumerate(records):
        if "image" in rec:
            rec["image"] = f"sub/{rec['id']}.v1.png"  # dots and folders in paths must not leak into keys
            (folder / "sub").mkdir(exist_ok=True)
            (folder / rec["image"]).write_bytes(noisy_png(k))
    records.insert(5, {"id": "broken.jpg", "image": "sub/broken.jpg", "conversations": qa("What?", "x", True)})
    (folder / "sub/broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    records.insert(11, {"id": "gone", "image": "sub/gone.jpg", "conversations": qa("What?", "x", True)})
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(records))
    return path, folder, records


def digest(out) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


CAP_MB = 16 / 1024  # 16 KiB: a handful of 2-4 KB images per shard


def test_caps_keys_skips_and_roundtrip(layout, tmp_path, capsys):
    path, folder, records = layout
    out = tmp_path / "shards"
    manifest = convert(path, folder, out, max_size_mb=CAP_MB, max_count=5, progress=False)
    assert manifest["skipped"] == {"corrupt_image": 1, "missing_image": 1}
    assert {s["id"] for s in manifest["skipped_records"]} == {"broken.jpg", "gone"}
    err = capsys.readouterr().err
    assert "corrupt_image: 1" in err and "missing_image: 1" in err and "'broken.jpg'" in err
    shards = sorted(out.glob("*.tar"))
    assert len(shards) == len(manifest["shards"]) > 3
    keys, samples = [], {}
    for shard in shards:
        assert shard.stat().st_size <= CAP_MB * 2**20
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            for m in tar.getmembers():
                samples.setdefault(m.name.split(".")[0], {})[m.name.split(".", 1)[1]] = tar.extractfile(m).read()
        shard_keys = sorted({n.split(".")[0] for n in names})
        assert len(shard_keys) <= 5
        assert all(n.count(".") == 1 for n in names)  # `key.ext`: no dot in any key
        keys += shard_keys
    assert len(keys) == len(set(keys)) == manifest["num_samples"] == len(records) - 2
    by_id = {r["id"]: r for r in records}
    for members in samples.values():
        rec = json.loads(members["json"])
        assert rec == by_id[rec["id"]]
        if "image" in rec:
            assert members["png"] == (folder / rec["image"]).read_bytes()  # original bytes
        else:
            assert set(members) == {"json"}
    urls, found = resolve_shards(str(out))
    assert [u.rsplit("/", 1)[1] for u in urls] == [s.name for s in shards] and found["num_samples"] == len(keys)


def test_rerun_is_identical_and_leaves_no_temp_files(layout, tmp_path):
    path, folder, _ = layout
    out = tmp_path / "shards"
    convert(path, folder, out, max_size_mb=CAP_MB, max_count=5, progress=False)
    first = digest(out)
    convert(path, folder, out, max_size_mb=CAP_MB, max_count=5, progress=False)  # up to date: untouched
    assert digest(out) == first
    convert(path, folder, out, max_size_mb=CAP_MB, max_count=5, progress=False, overwrite=True, workers=2)
    assert digest(out) == first  # rebuilt with a process pool: same bytes
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_interrupted_run_leaves_no_partial_shard_and_resumes(layout, tmp_path, monkeypatch):
    path, folder, _ = layout
    clean = tmp_path / "clean"
    convert(path, folder, clean, max_size_mb=CAP_MB, max_count=5, progress=False)
    out = tmp_path / "shards"
    calls = {"n": 0}
    real_add = to_shards.ShardWriter.add

    def failing_add(self, index, members):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt  # killed mid-shard
        return real_add(self, index, members)

    monkeypatch.setattr(to_shards.ShardWriter, "add", failing_add)
    with pytest.raises(KeyboardInterrupt):
        convert(path, folder, out, max_size_mb=CAP_MB, max_count=5, progress=False)
    monkeypatch.setattr(to_shards.ShardWriter, "add", real_add)
    names = sorted(p.name for p in out.iterdir())
    assert ".progress.json" in names and "index.json" not in names
    assert not [n for n in names if ".tmp" in n]  # no half-written shard
    done = json.loads((out / ".progress.json").read_text())["shards"]
    assert [n for n in names if n.endswith(".tar")] == [s["name"] for s in done]
    convert(path, folder, out, max_size_mb=CAP_MB, max_count=5, progress=False)  # resumes after them
    assert digest(out) == digest(clean)


def test_every_skip_is_placed_before_a_shard_or_after_the_last(layout, tmp_path):
    """Each shard's `skipped_before` counts the skips since the previous shard's last record; the skips after the
    last shard's last record are `skipped_after_last_shard`: together they make the totals."""
    path, folder, records = layout
    records = [*records, {"id": "late", "image": "sub/late.jpg", "conversations": qa("What?", "x", True)}]
    path.write_text(json.dumps(records))  # a missing image after every good record
    manifest = convert(path, folder, tmp_path / "shards", max_size_mb=CAP_MB, max_count=5, progress=False)
    skips = {s["index"]: s["reason"] for s in manifest["skipped_records"]}
    assert skips == {5: "corrupt_image", 11: "missing_image", len(records) - 1: "missing_image"}
    prev = -1
    for shard in manifest["shards"]:
        expected = [reason for index, reason in skips.items() if prev < index <= shard["last"]]
        assert shard["skipped_before"] == {r: expected.count(r) for r in set(expected)}
        prev = shard["last"]
    assert prev == len(records) - 2 and manifest["skipped_after_last_shard"] == {"missing_image": 1}
    total = sum((collections.Counter(s["skipped_before"]) for s in manifest["shards"]), collections.Counter())
    assert dict(total + collections.Counter(manifest["skipped_after_last_shard"])) == manifest["skipped"]


def test_a_glob_over_tars_the_index_does_not_list_says_so(layout, tmp_path, caplog):
    """A tar left by another conversion in the same folder: a glob reads it too, with a warning naming it; the
    folder itself reads only the shards its index.json lists."""
    path, folder, _ = layout
    out = tmp_path / "shards"
    manifest = convert(path, folder, out, max_size_mb=CAP_MB, max_count=5, progress=False)
    listed = [s["name"] for s in manifest["shards"]]
    (out / "other-000000.tar").write_bytes((out / listed[0]).read_bytes())
    with caplog.at_level("WARNING", logger="dc.data.shards"):
        urls, found = resolve_shards(f"{out}/*.tar")
    assert sorted(u.rsplit("/", 1)[1] for u in urls) == sorted([*listed, "other-000000.tar"]) and found is None
    assert "matches 1 file(s) that" in caplog.text and "other-000000.tar" in caplog.text
    caplog.clear()
    urls, found = resolve_shards(str(out))
    assert [u.rsplit("/", 1)[1] for u in urls] == listed and found["num_samples"] == manifest["num_samples"]
    assert not caplog.text


def test_cli(layout, tmp_path):
    path, folder, _ = layout
    out = tmp_path / "cli"
    assert (
        main(
            [
                "--json",
                str(path),
                "--image-folder",
                str(folder),
                "--out",
                str(out),
                "--max-count",
                "100",
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "index.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == ["mix-000000.tar"]


def test_command_line_names_a_missing_input(tmp_path, capsys) -> None:
    (tmp_path / "data.json").write_text("[]")
    cases = [
        (["--json", str(tmp_path / "nope.json"), "--image-folder", str(tmp_path)], f"--json {tmp_path}/nope.json"),
        (["--json", str(tmp_path / "data.json"), "--image-folder", str(tmp_path / "imgs")], "--image-folder"),
    ]
    for argv, named in cases:
        with pytest.raises(SystemExit) as exit_info:
            to_shards.main([*argv, "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2 and named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_text_that_is_not_unicode_and_files_that_are_not_utf8_or_hold_nothing(tmp_path, capsys):
    """A lone surrogate (valid JSON, not valid Unicode) is one malformed record, in the converter and in the JSON
    loader; a JSON file that is not UTF-8 or holds no records is refused naming the file."""
    from dc.data.llava_json import RecordStore
    from dc.data.records import BadRecord
    from dc.utils.errors import ConfigError

    records = good_records(3, 1)
    records[1]["conversations"][1]["value"] = "\udcff\ud800"
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))  # ensure_ascii: the file itself is valid UTF-8 JSON
    folder = tmp_path / "images"
    folder.mkdir()
    for k, rec in enumerate(records):
        if "image" in rec:
            (folder / rec["image"]).write_bytes(image_bytes(k))
    manifest = convert(path, folder, tmp_path / "shards", progress=False)
    assert manifest["skipped"] == {"malformed_record": 1} and manifest["num_samples"] == 3
    store = RecordStore.from_file(path)
    assert [store[i]["id"] for i in (0, 2, 3)] == [records[i]["id"] for i in (0, 2, 3)]
    with pytest.raises(BadRecord, match="text that is not valid Unicode") as bad:
        store[1]
    assert bad.value.reason == "malformed_record" and bad.value.record_id == "data.json#1"

    lines = tmp_path / "data.jsonl"  # the same records as JSONL: the surrogate spelled as an escape
    lines.write_text("".join(json.dumps(r) + "\n" for r in records))
    store = RecordStore.from_file(lines)
    assert store[0]["id"] == records[0]["id"]
    with pytest.raises(BadRecord, match="text that is not valid Unicode"):
        store[1]

    latin = tmp_path / "latin1.json"
    latin.write_bytes(json.dumps(records[:1]).replace("red", "r\u00e9d").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.json: not UTF-8 text \(byte \d+"):
        RecordStore.from_file(latin)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["--json", str(empty), "--image-folder", str(folder), "--out", str(tmp_path / "e")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"error: {empty}: the file holds no records; nothing to convert\n"
    assert not (tmp_path / "e").exists()
