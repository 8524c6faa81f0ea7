"""Optional model-judge plumbing (MM-Vet, LLaVA-Bench, MathVista extraction). Never required.

Three ways to get judge scores, in order of preference for reproducibility:

1. Write the request file (:func:`write_requests`, OpenAI Batch API JSONL: one
   ``{"custom_id", "method", "url", "body"}`` per line), run it wherever you like, and pass the
   output file back as ``judge_responses`` (:func:`read_responses` accepts Batch API output lines and
   simple ``{"custom_id", "content"}`` lines).
2. Enable the live judge (``use_judge=True``) *and* export the API key (env var named by
   ``judge_api_key_env``, default ``OPENAI_API_KEY``): :class:`ChatJudge` calls an OpenAI-compatible
   ``/chat/completions`` endpoint with the standard library only. With ``judge_responses`` also set,
   live replies are appended there, so a re-score only asks for what is missing.
3. Neither: the benchmark writes the request file and reports ``status="needs_judge"``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from dc.eval.benchmarks.answers_io import truncate_partial_tail
from dc.eval.benchmarks.report import atomic_write_text

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
JudgeFn = Callable[[Messages, float, int], str]  # (messages, temperature, max_tokens) -> reply text


def batch_line(
    custom_id: str, messages: Messages, *, model: str, temperature: float, max_tokens: int
) -> dict[str, Any]:
    """One OpenAI Batch API request object."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens},
    }


def write_requests(path: str | Path, lines: Iterable[Mapping[str, Any]]) -> Path:
    """Atomically write request objects as JSONL."""
    text = "".join(json.dumps(dict(x), ensure_ascii=False) + "\n" for x in lines)
    return atomic_write_text(path, text)


def read_responses(path: str | Path) -> dict[str, str]:
    """Read judge replies keyed by ``custom_id``.

    Accepts OpenAI Batch output lines (``{"custom_id", "response": {"body": {"choices": [...]}}}``)
    and simple lines (``{"custom_id", "content"}``). Unparsable lines are skipped.
    """
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            cid = obj.get("custom_id")
            if cid is None:
                continue
            if isinstance(obj.get("content"), str):
                out[str(cid)] = obj["content"]
                continue
            try:
                out[str(cid)] = obj["response"]["body"]["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                continue
    return out


class ChatJudge:
    """Minimal OpenAI-compatible chat client (standard library only).

    Args:
        model: Judge model name.
        api_key: Secret key.
        base_url: API root (``.../v1``).
        timeout: Seconds per request.
        max_retries: Retries on network/rate-limit errors (exponential back-off).
    """

    def __init__(
        self,
        model: str,
        api_key: str,
        *,
        base_url: str = "https://api.openai.com/v1",
        timeout: float = 60.0,
        max_retries: int = 5,
    ) -> None:
        self.model, self._key, self.base_url = model, api_key, base_url.rstrip("/")
        self.timeout, self.max_retries = timeout, max_retries

    def __call__(self, messages: Messages, temperature: float, max_tokens: int) -> str:
        body = json.dumps(
            {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        ).encode()
        req = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"},
        )
        for attempt in range(self.max_retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())["choices"][0]["message"]["content"]
            except (urllib.error.URLError, TimeoutError, KeyError, json.JSONDecodeError) as e:
                if attempt == self.max_retries:
                    raise
                log.warning("judge request failed (%s); retry %d", e, attempt + 1)
                time.sleep(min(60.0, 2.0**attempt))
        raise RuntimeError("unreachable")


def make_judge(
    use_judge: bool, model: str, api_key_env: str = "OPENAI_API_KEY", base_url: str = "https://api.openai.com/v1"
) -> tuple[JudgeFn | None, str | None]:
    """Build the live judge if it is enabled and its key is set.

    Returns:
        ``(judge or None, note explaining why there is none or None)``.
    """
    if not use_judge:
        return None, None
    key = os.environ.get(api_key_env)
    if not key:
        return None, f"use_judge is on but ${api_key_env} is not set; no judge calls were made"
    return ChatJudge(model, key, base_url=base_url), None


def collect_replies(
    requests: Mapping[str, dict[str, Any]],
    *,
    judge: JudgeFn | None,
    responses_file: str | Path | None,
) -> dict[str, str]:
    """Gather replies for ``custom_id -> batch_line`` requests from a response file and/or a live judge.

    Replies already in the response file are not re-requested; new live replies are appended to it
    (one flushed line each), so an interrupted or repeated scoring run does not pay twice. A failing
    judge stops the live calls (logged); the caller reports the ungraded remainder.
    """
    replies: dict[str, str] = {}
    path = Path(responses_file) if responses_file is not None else None
    if path is not None and path.exists():
        replies.update(read_responses(path))
    todo = [cid for cid in requests if cid not in replies]
    if judge is None or not todo:
        return replies
    cache = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            truncate_partial_tail(path)
        cache = open(path, "a", encoding="utf-8")
    try:
        for cid in todo:
            b = requests[cid]["body"]
            try:
                replies[cid] = judge(b["messages"], b["temperature"], b["max_tokens"])
            except Exception as e:  # noqa: BLE001 -- any transport error: keep what we have
                log.warning("judge failed on %s (%s); stopping live judge calls", cid, e)
                break
            if cache is not None:
                cache.write(json.dumps({"custom_id": cid, "content": replies[cid]}, ensure_ascii=False) + "\n")
                cache.flush()
    finally:
        if cache is not None:
            cache.close()
    return replies
