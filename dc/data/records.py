"""One LLaVA record → one training sample, and what makes a record bad. Shared by the JSON and the shard path.

A record is `{"id", "image": relative path | [paths] (optional), "conversations": [{"from", "value"}, ...]}`.
`SampleBuilder` checks it in a fixed order (cheap text checks first, images decoded last) and either returns a
sample (`input_ids`/`labels` with each image's visual tokens expanded to its own count, `pixel_values` [V, 3, H, W]
holding every view of every image in order, `visual` one `VisualMeta` per image) or raises `BadRecord` with one of
`SKIP_REASONS`. A single-image record has its `<image>` moved to the front of its turn (the reference's rule); a
record with a list of images keeps each tag where the text places it, and each image is spliced at its own tag. The datasets turn a `BadRecord` into a `Skipped` marker that the
collate counts (`batch["skipped"]`), or, with `data.strict=true`, into a `BadRecordError` naming the record.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from dc.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX
from dc.data.visual import VisualProcessor
from dc.models.llms.templates import GPT, ChatTemplate, validate_conversation
from dc.models.visual.base import VisualMeta
from dc.utils.errors import ConfigError

log = logging.getLogger(__name__)

SKIP_REASONS: dict[str, str] = {
    "bad_json": "the record's JSON does not parse (JSONL line or shard member)",
    "malformed_record": "not a JSON object, no 'conversations' field, or a field of the wrong type",
    "no_conversations": "'conversations' is an empty list",
    "bad_conversation": "turns malformed: unknown role, roles out of order, a non-string value, no reply",
    "tag_without_image": "<image> in the text but the record has no image",
    "image_without_tag": "the record has more images than <image> tags (e.g. an image and no tag)",
    "extra_image_tags": "more <image> tags than images (e.g. two tags and one image)",
    "image_tag_mismatch": "the template produced a different number of image slots than the record has images",
    "missing_image": "image file not found (JSON) or no image member in the shard sample",
    "corrupt_image": "image bytes that PIL cannot decode",
    "too_long": "longer than max_length after visual-token expansion and cannot be truncated safely",
    "bad_shard": "a tar read error (truncated or corrupt shard); counts errors, not records",
    "missing_video": "video file or frame folder not found",
    "corrupt_video": "a video file FFmpeg cannot open or read, or a sampled frame image PIL cannot decode",
    "empty_video": "a video with no video stream or no decodable frame, or a frame folder with no images",
}
"""Every reason a record is skipped, with what it means (the keys of `batch["skipped"]`)."""

OVERLENGTH = ("truncate", "skip")


class BadRecord(Exception):
    """A record that cannot become a sample (internal; caught by the datasets)."""

    def __init__(self, reason: str, detail: str, record_id: Any = None) -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.record_id = record_id


class BadDataError(RuntimeError):
    """So many records of a file are bad that no batch can be formed (the message counts the reasons)."""


class BadRecordError(ValueError):
    """Raised instead of skipping when `data.strict=true`."""


@dataclass(frozen=True)
class Skipped:
    """What a dataset yields in place of a bad record; the collate drops it and counts `reason`."""

    reason: str
    record_id: Any = None


class SkipReporter:
    """Logs skipped records (with their id) and raises instead in strict mode.

    Each process (DataLoader worker) has its own copy; after `log_limit` warnings for one reason the rest of
    that reason are logged at DEBUG, so a systematic problem (a wrong image folder) does not flood the log.
    """

    def __init__(self, strict: bool = False, log_limit: int = 100) -> None:
        self.strict = strict
        self.log_limit = log_limit
        self.logged: Counter[str] = Counter()

    def __call__(self, err: BadRecord, where: str) -> Skipped:
        msg = f"record {err.record_id!r} ({where}): {err.reason}: {err.detail}"
        if self.strict:
            raise BadRecordError(f"bad {msg} [data.strict=true; set it to false to skip and count such records]")
        self.logged[err.reason] += 1
        n = self.logged[err.reason]
        if n <= self.log_limit:
            log.warning("skipping %s", msg)
            if n == self.log_limit:
                log.warning("further %r skips in this process are logged at DEBUG level", err.reason)
        else:
            log.debug("skipping %s", msg)
        return Skipped(err.reason, err.record_id)


# ----------------------------------------------------------------------------------------------------------------
# Record checks


def record_id(record: Any, fallback: Any = None) -> Any:
    """The record's `id` (for logs), or `fallback` when it has none."""
    if isinstance(record, dict) and record.get("id") is not None:
        return record["id"]
    return fallback


def check_record(record: Any, fallback_id: Any = None) -> tuple[Any, list[dict], list[str]]:
    """Structural checks that need no tokenizer and no image.

    Returns:
        (id, conversations, image paths) — the paths as listed in the record (possibly empty).

    Raises:
        BadRecord: `malformed_record`, `no_conversations`, `bad_conversation` or one of the tag reasons.
    """
    rid = record_id(record, fallback_id)
    if not isinstance(record, dict):
        raise BadRecord("malformed_record", f"expected a JSON object, got {type(record).__name__}", rid)
    if "conversations" not in record:
        raise BadRecord("malformed_record", f"no 'conversations' field (keys: {sorted(record)})", rid)
    conv = record["conversations"]
    if not isinstance(conv, list):
        raise BadRecord("malformed_record", f"'conversations' is a {type(conv).__name__}, not a list", rid)
    if not conv:
        raise BadRecord("no_conversations", "'conversations' is empty", rid)
    images = record.get("image")
    if images is None:
        paths: list[str] = []
    elif isinstance(images, str):
        paths = [images]
    elif isinstance(images, list) and all(isinstance(p, str) for p in images):
        paths = list(images)
    else:
        raise BadRecord("malformed_record", f"'image' must be a path or a list of paths, got {images!r}", rid)
    try:
        validate_conversation(conv)
    except ValueError as exc:
        raise BadRecord("bad_conversation", str(exc), rid) from None
    return rid, conv, paths


def check_image_tags(conversations: list[dict], n_images: int, rid: Any = None) -> None:
    """Raise `BadRecord` unless the number of `<image>` tags equals the number of images."""
    n_tags = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in conversations)
    if n_tags == n_images:
        return
    if n_images == 0:
        raise BadRecord("tag_without_image", f"{n_tags} <image> tag(s) but no image", rid)
    if n_tags > n_images:
        raise BadRecord("extra_image_tags", f"{n_tags} <image> tags but {n_images} image(s)", rid)
    raise BadRecord("image_without_tag", f"{n_images} image(s) but {n_tags} <image> tag(s)", rid)


# ----------------------------------------------------------------------------------------------------------------
# Token-level steps


def expand_visual_tokens(input_ids: list[int], labels: list[int], counts: Sequence[int]) -> tuple[list[int], list[int]]:
    """Replace the k-th `IMAGE_TOKEN_INDEX` by `counts[k]` of them (labels ignored there).

    List version for prompts (`dc.eval.generate`); `SampleBuilder.text` does the same on tensors.

    Raises:
        ValueError: the number of placeholders differs from `len(counts)`.
    """
    slots = sum(1 for i in input_ids if i == IMAGE_TOKEN_INDEX)
    if slots != len(counts):
        raise ValueError(f"prompt has {slots} image placeholder(s) but {len(counts)} visual input(s) were given")
    ids_out: list[int] = []
    labels_out: list[int] = []
    k = 0
    for i, lab in zip(input_ids, labels, strict=True):
        if i == IMAGE_TOKEN_INDEX:
            ids_out.extend([IMAGE_TOKEN_INDEX] * counts[k])
            labels_out.extend([IGNORE_INDEX] * counts[k])
            k += 1
        else:
            ids_out.append(i)
            labels_out.append(lab)
    return ids_out, labels_out


# ----------------------------------------------------------------------------------------------------------------
# Sample building

ImageSource = Callable[[], bytes]
"""Returns one image's encoded bytes (reading a missing file raises FileNotFoundError)."""


class SampleBuilder:
    """Turns a parsed record plus its image sources into a sample dict, or raises `BadRecord`.

    Args:
        tokenizer: the LLM's tokenizer.
        template: the chat template (places `<image>`, masks labels).
        visual: images → views and metas (`dc.data.visual.VisualProcessor`); its counts size each image's slots.
        max_length: maximum sequence length after visual-token expansion.
        overlength: "truncate" (cut, counted in `batch["truncated"]`, when the cut keeps every visual token and
            at least one supervised token; otherwise skipped as `too_long`) or "skip" (skip every longer sample).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: ChatTemplate,
        visual: VisualProcessor,
        max_length: int = 2048,
        overlength: str = "truncate",
    ) -> None:
        if overlength not in OVERLENGTH:
            raise ConfigError(f"data.overlength={overlength!r}: expected one of {OVERLENGTH}")
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ConfigError(f"data.max_length={max_length!r} must be a positive integer")
        template.check_tokenizer(tokenizer)  # a wrong tokenizer is a config error, not a bad record
        self.tokenizer = tokenizer
        self.template = template
        self.visual = visual
        self.max_length = max_length
        self.overlength = overlength
        self.told_leading_gpt = False

    def text(
        self, rid: Any, conversations: list[dict], metas: Sequence[VisualMeta]
    ) -> tuple[torch.Tensor, torch.Tensor, bool, int]:
        """(input_ids, labels, truncated, images kept) of a checked conversation whose k-th image is `metas[k]`.

        A cut to `max_length` may drop whole images after the cut (never part of one): the fourth value says how
        many of the images, from the first, still have their slots.
        """
        check_image_tags(conversations, len(metas), rid)
        try:
            enc = self.template.encode(conversations, self.tokenizer)
        except ValueError as exc:
            raise BadRecord("bad_conversation", str(exc), rid) from None
        if not self.told_leading_gpt and conversations and conversations[0].get("from") == GPT:
            self.told_leading_gpt = True
            log.warning(
                "record %r starts with a 'gpt' turn: that turn is dropped and the rest trained on, as LLaVA's "
                "preprocessing does (said once per data process; later such records are not named)",
                rid,
            )
        ids = torch.tensor(enc.input_ids, dtype=torch.long)
        labels = torch.tensor(enc.labels, dtype=torch.long)
        is_image = ids == IMAGE_TOKEN_INDEX
        slots = int(is_image.sum())
        if slots != len(metas):
            raise BadRecord(
                "image_tag_mismatch",
                f"template {self.template.name!r} gives {slots} image slot(s) for {len(metas)} image(s)",
                rid,
            )
        if slots:  # the k-th placeholder -> metas[k].tokens of them, labels ignored there (already IGNORE_INDEX)
            repeats = torch.ones_like(ids)
            repeats[is_image] = torch.tensor([m.tokens for m in metas], dtype=torch.long)
            ids, labels = ids.repeat_interleave(repeats), labels.repeat_interleave(repeats)
        n = len(ids)
        if n > self.max_length:
            m = self.max_length
            # Never cut through a run of visual tokens, and keep at least one supervised token.
            safe = self.overlength == "truncate" and not (
                ids[m - 1] == IMAGE_TOKEN_INDEX and ids[m] == IMAGE_TOKEN_INDEX
            )
            if not safe or not bool((labels[:m] != IGNORE_INDEX).any()):
                raise BadRecord("too_long", f"{n} tokens after visual-token expansion > max_length={m}", rid)
            ids, labels = ids[:m], labels[:m]
        slots_kept = int((ids == IMAGE_TOKEN_INDEX).sum()) if len(metas) else 0
        kept, total = 0, 0
        while kept < len(metas) and total + metas[kept].tokens <= slots_kept:
            total += metas[kept].tokens
            kept += 1
        return ids, labels, n > self.max_length, kept

    @staticmethod
    def _read(rid: Any, k: int, read: ImageSource) -> bytes:
        try:
            return read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise BadRecord("missing_image", f"image {k}: {exc}", rid) from None

    def metas(self, rid: Any, sources: Sequence[ImageSource]) -> list[VisualMeta]:
        """Each image's `VisualMeta`; reads only headers, and only when the mode's count depends on the size."""
        if not self.visual.size_dependent:
            return [self.visual.plain_meta] * len(sources)
        out = []
        for k, read in enumerate(sources):
            data = self._read(rid, k, read)
            try:
                out.append(self.visual.meta_from_bytes(data))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise BadRecord("corrupt_image", f"image {k}: {type(exc).__name__}: {exc}", rid) from None
        return out

    def pixels(self, rid: Any, sources: Sequence[ImageSource], metas: Sequence[VisualMeta]) -> torch.Tensor:
        """[V, 3, H, W]: every view of every image, in order (V may be 0)."""
        out = []
        for k, (read, meta) in enumerate(zip(sources, metas, strict=True)):
            data = self._read(rid, k, read)
            try:
                views, got = self.visual.from_bytes(data)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise BadRecord("corrupt_image", f"image {k}: {type(exc).__name__}: {exc}", rid) from None
            if got != meta:  # the file changed between tokenising and decoding
                raise BadRecord(
                    "corrupt_image", f"image {k}: its size changed after it was tokenised ({meta} -> {got})", rid
                )
            out.append(views)
        if len(out) == 1:
            return out[0]  # the collate's cat is the only copy
        if out:
            return torch.cat(out)
        return self.visual.empty()

    def prepare(
        self,
        record: Any,
        resolve: Callable[[Any, list[str]], Sequence[ImageSource]],
        fallback_id: Any = None,
    ) -> dict[str, Any]:
        """Every check and the tokenisation, but no image decoding: a sample without `pixel_values`.

        It holds `visual` (one meta per image, from headers at most) and the image `sources`; `finish` decodes
        them. The shard stream groups prepared samples and decodes only the batch it is about to emit, so its
        sorting buffer holds encoded bytes (~100 KB per image) instead of float pixels (1.35 MB at 336 px).

        Args:
            record: the parsed record.
            resolve: `(id, image paths of the record) -> image sources`; may raise `BadRecord` (`missing_image`).
                The JSON dataset reads files under its image folder; the shard reader returns the sample's
                image members.
            fallback_id: id for logs when the record has none (its index or shard key).
        """
        rid, conv, paths = check_record(record, fallback_id)
        sources = list(resolve(rid, paths))
        check_image_tags(conv, len(sources), rid)
        metas = self.metas(rid, sources)
        ids, labels, truncated, kept = self.text(rid, conv, metas)
        return {
            "id": rid,
            "input_ids": ids,
            "labels": labels,
            "truncated": truncated,
            "n_images": kept,
            "visual": metas[:kept],
            "sources": sources[:kept],
        }

    def finish(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The prepared `sample` with `pixel_values` (its sources dropped); raises `BadRecord` for bad images."""
        out = {k: v for k, v in sample.items() if k != "sources"}
        out["pixel_values"] = self.pixels(sample["id"], sample["sources"], sample["visual"])
        return out

    def __call__(
        self,
        record: Any,
        resolve: Callable[[Any, list[str]], Sequence[ImageSource]],
        fallback_id: Any = None,
    ) -> dict[str, Any]:
        """The sample of `record` (`prepare` then `finish`); raises `BadRecord`."""
        return self.finish(self.prepare(record, resolve, fallback_id))
