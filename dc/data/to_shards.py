"""Convert the LLaVA layout (JSON list + image folder) into webdataset tar shards.

    python -m dc.data.to_shards --json $DATA_ROOT/LLaVA-Instruct/llava_v1_5_mix665k.json \\
        --image-folder $DATA_ROOT/LLaVA-Instruct --out $DATA_ROOT/shards/llava_instruct [--max-size-mb 1024] \\
        [--max-count 10000] [--workers 8]

Each sample is `{key}.json` (the record, unchanged) plus the original image bytes as `{key}.{ext}` (`ext` from
the decoded format; several images: `{key}.0.jpg`, `{key}.1.jpg`, ...). Keys are the record's position in
the JSON (`000001234`): no dots, unique even where ids repeat. Every image is decoded once; records that cannot
become samples (see `dc.data.records.SKIP_REASONS`, plus `larger_than_shard`) are skipped, counted, listed in
`index.json` and summarised at the end. Length checks need the tokenizer and happen at load time.

Safe to interrupt and re-run: each shard is written to a hidden temp file and renamed when complete; after
each shard `.progress.json` records what is done. A re-run with the same inputs and options keeps the complete
shards and continues after the last one (same bytes as an uninterrupted run); different inputs or
`--overwrite` rebuild everything. `index.json` (shard names, counts, skips) is written last.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import multiprocessing
import os
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from dc.data.llava_json import BadLine, read_records
from dc.data.records import BadRecord, check_image_tags, check_record
from dc.data.shards import MANIFEST
from dc.utils.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "dc-llava-shards/1"
PROGRESS = ".progress.json"
BLOCK, RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "MPO": "jpg"}
MAX_LISTED_SKIPS = 10000


def _member_size(n: int) -> int:
    return BLOCK + math.ceil(n / BLOCK) * BLOCK


def tar_size(member_bytes: int) -> int:
    """Size of a tar holding members of `member_bytes` (headers included) once closed (end blocks, padding)."""
    return math.ceil((member_bytes + 2 * BLOCK) / RECORD) * RECORD


def prepare(item: tuple[int, Any], image_folder: Path) -> tuple[int, Any, str, Any]:
    """Check one record and read + decode its images.

    Returns:
        (index, id, "ok", [(member suffix, bytes), ...]) or (index, id, reason, detail).
    """
    index, record = item
    if isinstance(record, BadLine):
        return index, f"line {record.line}", "bad_json", f"line {record.line}: {record.error}"
    try:
        rid, conv, paths = check_record(record, f"#{index}")
        check_image_tags(conv, len(paths), rid)
        images = []
        for k, rel in enumerate(paths):
            path = image_folder / rel
            try:
                data = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise BadRecord("missing_image", f"{path} not found", rid) from None
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    fmt = img.format
            except Exception as exc:  # PIL raises many types for bad bytes; all mean "cannot decode"
                msg = re.sub(r" at 0x[0-9a-f]+", "", str(exc))  # no object addresses: re-runs write the same index
                raise BadRecord("corrupt_image", f"{path}: {type(exc).__name__}: {msg}", rid) from None
            ext = _EXT.get(fmt or "", (fmt or "bin").lower())
            images.append((ext if len(paths) == 1 else f"{k}.{ext}", data))
    except BadRecord as err:
        return index, err.record_id, err.reason, err.detail
    try:
        text = json.dumps(record, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:  # a lone surrogate (valid JSON, not valid Unicode)
        return index, rid, "malformed_record", f"text that is not valid Unicode ({exc.reason})"
    members = [("json", text)] + images
    return index, rid, "ok", members


class ShardWriter:
    """Writes `{prefix}-{n:06d}.tar` shards of at most `max_bytes` / `max_count`, each atomically."""

    def __init__(self, out: Path, prefix: str, max_bytes: int, max_count: int, first_shard: int = 0) -> None:
        self.out, self.prefix, self.max_bytes, self.max_count = out, prefix, max_bytes, max_count
        self.next_shard = first_shard
        self.tar: tarfile.TarFile | None = None
        self.tmp: Path | None = None
        self.count = self.bytes = 0
        self.first = self.last = -1
        self.done: list[dict] = []

    def fits_alone(self, members: list[tuple[str, bytes]]) -> bool:
        return tar_size(sum(_member_size(len(d)) for _, d in members)) <= self.max_bytes

    def add(self, index: int, members: list[tuple[str, bytes]]) -> dict | None:
        """Add sample `index`; returns the shard entry if this closed a shard first."""
        size = sum(_member_size(len(d)) for _, d in members)
        closed = None
        if self.tar is not None and (self.count >= self.max_count or tar_size(self.bytes + size) > self.max_bytes):
            closed = self.close()
        if self.tar is None:
            name = f"{self.prefix}-{self.next_shard:06d}.tar"
            self.tmp = self.out / f".{name}.tmp-{os.getpid()}"
            self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
            self.count, self.bytes, self.first = 0, 0, index
        for suffix, data in members:
            info = tarfile.TarInfo(f"{index:09d}.{suffix}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1
        self.bytes += size
        self.last = index
        return closed

    def close(self) -> dict | None:
        """Finish the open shard (rename into place); returns its entry."""
        if self.tar is None:
            return None
        self.tar.close()
        name = f"{self.prefix}-{self.next_shard:06d}.tar"
        os.replace(self.tmp, self.out / name)
        entry = {
            "name": name,
            "count": self.count,
            "bytes": (self.out / name).stat().st_size,
            "first": self.first,
            "last": self.last,
        }
        if entry["bytes"] > self.max_bytes:
            log.warning("%s is %d bytes, over the %d cap", name, entry["bytes"], self.max_bytes)
        self.done.append(entry)
        self.tar, self.tmp = None, None
        self.next_shard += 1
        return entry

    def abort(self) -> None:
        """Drop the half-written shard."""
        if self.tar is not None:
            self.tar.close()
            self.tmp.unlink(missing_ok=True)
            self.tar = self.tmp = None


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _fingerprint(json_path: Path, image_folder: Path, prefix: str, max_bytes: int, max_count: int) -> dict:
    st = json_path.stat()
    return {
        "format": FORMAT,
        "json": str(json_path.resolve()),
        "json_size": st.st_size,
        "json_mtime_ns": st.st_mtime_ns,
        "image_folder": str(image_folder.resolve()),
        "prefix": prefix,
        "max_bytes": max_bytes,
        "max_count": max_count,
    }


def _kept_shards(out: Path, state: dict | None, fingerprint: dict) -> list[dict]:
    """Complete shards of a previous run with the same fingerprint, still on disk unchanged."""
    if not state or state.get("fingerprint") != fingerprint:
        return []
    kept = []
    for entry in state["shards"]:
        path = out / entry["name"]
        if not path.exists() or path.stat().st_size != entry["bytes"]:
            break
        kept.append(entry)
    return kept


def _results(records: list, start: int, image_folder: Path, workers: int) -> Iterator[tuple]:
    items = ((i, records[i]) for i in range(start, len(records)))
    fn = partial(prepare, image_folder=image_folder)
    if workers <= 1:
        yield from map(fn, items)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(fn, items, chunksize=16)


def convert(
    json_path: str | Path,
    image_folder: str | Path,
    out: str | Path,
    *,
    max_size_mb: float = 1024,
    max_count: int = 10000,
    prefix: str | None = None,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write the shards and `index.json`; return the manifest. See the module docstring."""
    json_path, image_folder, out = Path(json_path), Path(image_folder), Path(out)
    prefix = prefix or re.sub(r"[^A-Za-z0-9_-]", "_", json_path.stem)
    max_bytes = int(max_size_mb * 2**20)
    if max_bytes < RECORD or max_count < 1:
        raise ConfigError(f"--max-size-mb must be >= {RECORD / 2**20:.3f} and --max-count >= 1")
    records = read_records(json_path, bad_lines="keep")
    if not records:
        raise ConfigError(f"{json_path}: the file holds no records; nothing to convert")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".{prefix}-*.tar.tmp-*"):  # left by a killed run
        stale.unlink()
    fingerprint = _fingerprint(json_path, image_folder, prefix, max_bytes, max_count)
    state = None
    if not overwrite:
        for name in (PROGRESS, MANIFEST):  # the progress file is newer than a manifest beside it
            if (out / name).exists():
                candidate = json.loads((out / name).read_text())
                if candidate.get("fingerprint") == fingerprint:
                    state = candidate
                    break
    kept = _kept_shards(out, state, fingerprint)
    if state is not None and kept and state.get("complete") and len(kept) == len(state["shards"]):
        log.info("%s is up to date (%d shards)", out, len(kept))
        print(summary(state), file=sys.stderr)
        return state
    start = kept[-1]["last"] + 1 if kept else 0
    # Every skip so far as (index, reason); a resumed run starts from the counts its kept shards recorded.
    skipped: list[tuple[int, str]] = []
    base = Counter()
    for entry in kept:
        base.update(entry["skipped_before"])
    listed = [s for s in (state or {}).get("skipped_records", []) if s["index"] < start] if kept else []
    (out / MANIFEST).unlink(missing_ok=True)  # it would describe shards that are about to change
    writer = ShardWriter(out, prefix, max_bytes, max_count, first_shard=len(kept))
    writer.done = list(kept)

    def save_progress(complete: bool = False, **extra: Any) -> dict:
        counts = base + Counter(reason for _, reason in skipped)
        manifest = {
            "fingerprint": fingerprint,
            "complete": complete,
            "shards": writer.done,
            "num_samples": sum(s["count"] for s in writer.done),
            "num_records": len(records),
            "skipped": dict(sorted(counts.items())),
            "skipped_records": listed[:MAX_LISTED_SKIPS],
            **extra,
        }
        _write_json(out / (MANIFEST if complete else PROGRESS), manifest)
        return manifest

    def on_close(entry: dict) -> None:
        prev = writer.done[-2]["last"] if len(writer.done) > 1 else -1
        entry["skipped_before"] = dict(Counter(r for i, r in skipped if prev < i <= entry["last"]))
        save_progress()

    bar = tqdm(total=len(records), initial=start, disable=not progress, desc=f"shards -> {out.name}", unit="rec")
    try:
        for index, rid, status, payload in _results(records, start, image_folder, workers):
            bar.update(1)
            if status == "ok" and not writer.fits_alone(payload):
                status, payload = "larger_than_shard", f"sample needs more than --max-size-mb={max_size_mb}"
            if status != "ok":
                skipped.append((index, status))
                listed.append({"index": index, "id": rid, "reason": status, "detail": str(payload)[:300]})
                log.debug("skipping record %r (#%d): %s: %s", rid, index, status, payload)
                continue
            if (entry := writer.add(index, payload)) is not None:
                on_close(entry)
        if (entry := writer.close()) is not None:
            on_close(entry)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    last = writer.done[-1]["last"] if writer.done else -1
    # Each shard's `skipped_before` counts the skips between the previous shard and its own last record; the
    # records after the last shard's are counted here, so the shards' counts plus these make `skipped`.
    trailing = Counter(r for i, r in skipped if i > last)
    manifest = save_progress(complete=True, skipped_after_last_shard=dict(sorted(trailing.items())))
    (out / PROGRESS).unlink(missing_ok=True)
    names = {s["name"] for s in writer.done}
    for old in out.glob(f"{prefix}-*.tar"):  # shards of an earlier, longer run
        if re.fullmatch(rf"{re.escape(prefix)}-\d{{6}}\.tar", old.name) and old.name not in names:
            old.unlink()
    print(summary(manifest), file=sys.stderr)
    return manifest


def summary(manifest: dict) -> str:
    """Human-readable account of a conversion."""
    lines = [
        f"{manifest['num_samples']} samples in {len(manifest['shards'])} shards "
        f"from {manifest['num_records']} records; skipped {sum(manifest['skipped'].values())}:"
    ]
    examples: dict[str, list] = {}
    for s in manifest.get("skipped_records", []):
        examples.setdefault(s["reason"], []).append(s["id"])
    for reason, n in manifest["skipped"].items():
        lines.append(f"  {reason}: {n} (e.g. {', '.join(map(repr, examples.get(reason, [])[:5]))})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", required=True, help="LLaVA JSON list (or .jsonl)")
    p.add_argument("--image-folder", required=True, help="folder the records' image paths are relative to")
    p.add_argument("--out", required=True, help="output folder (shards + index.json)")
    p.add_argument("--max-size-mb", type=float, default=1024, help="cap on each shard's size (MiB)")
    p.add_argument("--max-count", type=int, default=10000, help="cap on samples per shard")
    p.add_argument("--prefix", default=None, help="shard name prefix (default: the JSON file's stem)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes reading images")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if a previous run can be continued")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not Path(args.json).is_file():
        p.error(f"--json {args.json}: no such file")
    if not Path(args.image_folder).is_dir():
        p.error(f"--image-folder {args.image_folder}: no such folder")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from dc.utils.cli import errors_as_messages

    with errors_as_messages((ConfigError,)):  # the message names the file or option: no traceback
        convert(
            args.json,
            args.image_folder,
            args.out,
            max_size_mb=args.max_size_mb,
            max_count=args.max_count,
            prefix=args.prefix,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
