"""The LLaVA layout: a JSON list of records plus an image folder, as a map-style dataset.

Record: `{"id", "image": relative path or list of paths (optional), "conversations": [{"from": "human"|"gpt",
"value"}, ...]}`. Each `<image>` becomes one `IMAGE_TOKEN_INDEX` from the template, which is expanded into that
image's number of visual tokens (`VisualMeta.tokens`); truncation to `max_length` happens after that expansion and never cuts through visual tokens
(such a sample is skipped as `too_long` instead). A bad record gives a `Skipped` marker that the collate drops
and counts (see `dc.data.records`).

Records are held as their JSON bytes in one buffer (`RecordStore`) and parsed on access: a list of 665K dicts
costs gigabytes, and forked DataLoader workers would copy it page by page as reference counts change.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from dc.data.records import SKIP_REASONS, BadDataError, BadRecord, SampleBuilder, Skipped, SkipReporter
from dc.data.visual import VisualProcessor
from dc.models.llms.templates import ChatTemplate
from dc.utils.errors import ConfigError

__all__ = ["LlavaJsonDataset", "RecordStore", "read_records"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadLine:
    """A JSONL line that does not parse (kept in place of its record by `read_records(..., bad_lines="keep")`)."""

    line: int
    error: str


def read_records(path: str | Path, bad_lines: str = "raise") -> list[Any]:
    """Read a LLaVA JSON list or a JSONL file (one record per line).

    Args:
        path: the file.
        bad_lines: JSONL only: "raise" on an unparsable line (naming file and line) or "keep" a `BadLine` in its
            place, so a converter can skip and count it as one bad record.

    Raises:
        ValueError: the file does not parse (the message names the file, and the line for JSONL) or is not a list.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        out: list[Any] = []
        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))  # bytes: decoded as UTF-8, strictly
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    if bad_lines != "keep":
                        raise ConfigError(f"{path}:{n}: not valid JSON ({exc})") from None
                    out.append(BadLine(n, str(exc)))
        return out
    try:
        data = json.loads(path.read_bytes())
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); expected a LLaVA JSON list"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); expected a LLaVA JSON list of records") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def encode_record(record: Any) -> bytes:
    """A record as UTF-8 JSON. Text that is not valid Unicode (a lone surrogate such as `"\\udcff"`, which JSON
    allows) is kept as it is (`surrogatepass`); reading it back raises, and the record is counted as malformed.
    """
    text = json.dumps(record, ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _text_chars(record: Any) -> int:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return 0
    return sum(
        len(t["value"]) for t in record["conversations"] if isinstance(t, dict) and isinstance(t.get("value"), str)
    )


def _n_images(record: Any) -> int:
    image = record.get("image") if isinstance(record, dict) else None
    return len(image) if isinstance(image, list) else int(image is not None)


class RecordStore:
    """Records as JSON bytes in one buffer plus offsets, with cheap per-record length estimates.

    Attributes:
        source: file name (for messages).
        text_chars: characters of all turn values per record (a length proxy; 0 for unparsable records).
        n_images: images per record (0 = text-only).
    """

    def __init__(
        self, blob: np.ndarray, offsets: np.ndarray, text_chars: np.ndarray, n_images: np.ndarray, source: str
    ) -> None:
        self.blob, self.offsets, self.source = blob, offsets, source
        self.text_chars, self.n_images = text_chars, n_images

    @classmethod
    def from_records(cls, records: list[Any], source: str = "<records>", raw: list[bytes] | None = None) -> RecordStore:
        """Pack parsed records (and, for JSONL, their raw lines, so an unparsable line stays one bad record)."""
        chunks = raw if raw is not None else [encode_record(r) for r in records]
        offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in chunks], out=offsets[1:])
        blob = np.frombuffer(b"".join(chunks), dtype=np.uint8) if chunks else np.zeros(0, np.uint8)
        chars = np.array([_text_chars(r) for r in records], dtype=np.int64)
        n_img = np.array([_n_images(r) for r in records], dtype=np.int64)
        return cls(blob, offsets, chars, n_img, source)

    @classmethod
    def from_file(cls, path: str | Path) -> RecordStore:
        """Read a JSON list (an unparsable file raises, naming it) or a JSONL file (a bad line is a bad record)."""
        path = Path(path)
        if path.suffix != ".jsonl":
            return cls.from_records(read_records(path), str(path))
        raw = [line for line in path.read_bytes().splitlines() if line.strip()]
        parsed: list[Any] = []
        for line in raw:
            try:
                parsed.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                parsed.append(None)
        return cls.from_records(parsed, str(path), raw=raw)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self, i: int) -> bytes:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def __getitem__(self, i: int) -> Any:
        """The parsed record `i`; raises `BadRecord("bad_json")` for an unparsable JSONL line."""
        try:
            text = self.raw(i).decode()  # strict UTF-8 (json.loads of bytes would pass surrogates)
            record = json.loads(text)
            if (
                "\\ud" in text or "\\uD" in text
            ):  # a JSONL line may spell a lone surrogate as an escape: check the strings
                json.dumps(record, ensure_ascii=False).encode()
            return record
        except json.JSONDecodeError as exc:
            raise BadRecord("bad_json", f"{exc}", f"{Path(self.source).name}#{i}") from None
        except UnicodeError as exc:  # not UTF-8 (a JSONL line), or a lone surrogate (kept by `encode_record`)
            detail = f"text that is not valid Unicode ({exc.reason})"
            raise BadRecord("malformed_record", detail, f"{Path(self.source).name}#{i}") from None

    def subset(self, start: int, stop: int) -> RecordStore:
        """Records [start, stop) (shares the buffer)."""
        off = self.offsets[start : stop + 1]
        return RecordStore(self.blob, off, self.text_chars[start:stop], self.n_images[start:stop], self.source)

    def image_paths(self, i: int) -> list[str]:
        """The image paths record `i` lists (none for text-only or unparsable records)."""
        try:
            image = json.loads(self.raw(i)).get("image")
        except (json.JSONDecodeError, AttributeError):
            return []
        if isinstance(image, str):
            return [image]
        return [p for p in image if isinstance(p, str)] if isinstance(image, list) else []

    def estimated_lengths(self, visual_tokens: np.ndarray, chars_per_token: float = 4.0) -> np.ndarray:
        """Token-count estimates without tokenising (for length grouping): chars / 4 + each record's visual tokens."""
        return (self.text_chars / chars_per_token).astype(np.int64) + np.asarray(visual_tokens, dtype=np.int64)


class LlavaJsonDataset(Dataset):
    """LLaVA JSON + image folder → tokenised samples with their images (or `Skipped` markers).

    Indexing with an int gives one sample; with a list of ints (a batch from `GroupedBatchSampler`), a list in
    which at least one item is a real sample: if every record of the batch is bad, random other records are
    tried (up to `refill_tries`; their failures are not counted here, they are counted where their own index
    comes up), so a batch is never empty.

    Args:
        json_path: the JSON list (or a `.jsonl` file); ignored when `records` is given.
        image_folder: root that `record["image"]` is relative to.
        tokenizer, template, visual: as in `SampleBuilder`.
        max_length: maximum sequence length after visual-token expansion.
        records: a `RecordStore` or a list of records to use instead of reading `json_path`.
        strict: raise `BadRecordError` on the first bad record instead of skipping it.
        overlength: "truncate" or "skip" (see `SampleBuilder`).
        refill_tries: how many random records to try when a whole batch is bad.
    """

    def __init__(
        self,
        json_path: str | Path | None,
        image_folder: str | Path,
        tokenizer: PreTrainedTokenizerBase,
        template: ChatTemplate,
        visual: VisualProcessor,
        max_length: int = 2048,
        records: RecordStore | list[dict] | None = None,
        *,
        strict: bool = False,
        overlength: str = "truncate",
        refill_tries: int = 64,
    ) -> None:
        if isinstance(records, RecordStore):
            self.records = records
        elif records is not None:
            self.records = RecordStore.from_records(records)
        else:
            self.records = RecordStore.from_file(json_path)
        self.image_folder = Path(image_folder)
        self.builder = SampleBuilder(tokenizer, template, visual, max_length, overlength)
        self.report = SkipReporter(strict)
        self.refill_tries = refill_tries

    def __len__(self) -> int:
        return len(self.records)

    def _sources(self, rid: Any, paths: list[str]) -> list:
        return [(self.image_folder / p).read_bytes for p in paths]

    def load(self, index: int) -> dict[str, Any]:
        """The sample at `index`; raises `BadRecord`."""
        return self.builder(self.records[index], self._sources, fallback_id=f"#{index}")

    def _get(self, index: int) -> dict[str, Any] | Skipped:
        try:
            return self.load(index)
        except BadRecord as err:
            return self.report(err, f"{Path(self.records.source).name}#{index}")

    def __getitem__(self, index: int | list[int]) -> Any:
        if isinstance(index, (list, tuple)):
            return self.__getitems__(list(index))
        return self._get(int(index))

    def __getitems__(self, indices: list[int]) -> list[Any]:
        out = [self._get(int(i)) for i in indices]
        if indices and all(isinstance(s, Skipped) for s in out):
            out.append(self._refill(indices))
        return out

    def _refill(self, indices: list[int]) -> dict[str, Any]:
        rng = random.Random(f"refill:{indices[:8]}")
        reasons: Counter[str] = Counter()
        for _ in range(self.refill_tries):
            j = rng.randrange(len(self.records))
            try:
                sample = self.load(j)
            except BadRecord as err:
                log.debug("refill candidate #%d is bad too: %s", j, err)
                reasons[err.reason] += 1
                continue
            log.info("every record of a batch was bad; filled it with record #%d", j)
            return sample
        why = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common())
        top = reasons.most_common(1)[0][0] if reasons else ""
        hint = {
            "too_long": "raise data.max_length",
            "missing_image": "check data.image_folder",
        }.get(top, f"check the file ({SKIP_REASONS.get(top, 'see docs/data.md')})")
        raise BadDataError(
            f"{self.records.source}: {self.refill_tries} random records in a row are bad ({why}; last batch "
            f"{indices[:8]}...): {hint}"
        )
