"""In-order, at-least-once delivery of one attempt's events to the server.

A worker must never lose or reorder a run's events because the server was
briefly unreachable, and must never make the server store one twice. So each
attempt gets an outbox: events queue in memory and one sender posts them one
at a time, oldest first. An event gets its ``seq`` when it is first sent and
keeps it on every resend, so the server can recognise a resend after a lost
answer (same (attempt, seq) → stored once). Failures are retried with
exponential backoff and full jitter.

Memory is bounded: when the queued LOG text passes ``max_pending_bytes``
(a long outage with a chatty op), the oldest unsent LOG lines are dropped and
replaced by one LOG line saying how many were dropped, so the gap is visible.
Events that carry state (STARTED, PROGRESS, COMPLETED, FAILED) are never
dropped.

A 409 (stale attempt) or a 400 ``locked`` (the run is finished or
cancelled) means this attempt may no longer report: the outbox drops what it
holds and calls ``on_rejected`` so the worker stops the container.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .client import AsyncGyozaClient, GyozaAPIError

log = logging.getLogger("gyoza.worker")

__all__ = ["Outbox", "MAX_LOG_MSG_BYTES"]

# The server accepts LOG messages up to 64 KiB; leave room for the JSON escaping.
MAX_LOG_MSG_BYTES = 60_000


@dataclass
class _Pending:
    type: str
    msg: str | int | float
    payload: dict[str, Any] | None = None
    seq: int | None = None  # set on the first send, then fixed for every resend
    size: int = 0  # bytes of LOG text, for the memory bound

    @property
    def sent(self) -> bool:
        return self.seq is not None


class Outbox:
    """Delivers one attempt's events in order; see the module docstring."""

    def __init__(
        self,
        client: AsyncGyozaClient,
        run_id: str,
        attempt: int,
        *,
        first_seq: int = 1,
        on_rejected: Callable[[str], None] | None = None,
        max_pending_bytes: int = 4 * 1024 * 1024,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.attempt = attempt
        self.rejected: str | None = None
        self._on_rejected = on_rejected
        self._queue: deque[_Pending] = deque()
        self._next_seq = first_seq
        self._max_pending = max_pending_bytes
        self._pending_bytes = 0
        self._backoff = backoff_s
        self._max_backoff = max_backoff_s
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._dropped_lines = 0

    # -- producer side ------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._send_loop(), name=f"outbox-{self.run_id}")

    def put(self, type_: str, msg: str | int | float = "", payload: dict[str, Any] | None = None) -> None:
        """Queue an event (not LOG: use ``put_log``). Ignored once rejected."""
        if self.rejected is not None:
            return
        self._append(_Pending(type_, msg, payload))

    def put_log(self, text: str) -> None:
        """Queue LOG text (lines joined by "\\n", at most MAX_LOG_MSG_BYTES).

        Merged into the previous queued LOG event when that one has not been
        sent yet and the sum still fits: after an outage, the backlog goes out
        in few requests.
        """
        if self.rejected is not None or not text:
            return
        size = len(text.encode("utf-8", "replace"))
        last = self._queue[-1] if self._queue else None
        if (
            last is not None
            and last.type == "LOG"
            and not last.sent
            and isinstance(last.msg, str)
            and last.size + 1 + size <= MAX_LOG_MSG_BYTES
        ):
            last.msg = f"{last.msg}\n{text}"
            last.size += 1 + size
            self._pending_bytes += 1 + size
        else:
            self._append(_Pending("LOG", text, None, size=size))
            self._pending_bytes += size
        if self._pending_bytes > self._max_pending:
            self._coalesce()

    def _append(self, item: _Pending) -> None:
        self._queue.append(item)
        self._empty.clear()
        self._wake.set()

    def _coalesce(self) -> None:
        """Drop the oldest unsent LOG text down to half the bound; leave a note in its place."""
        target = self._max_pending // 2
        dropped_lines = dropped_bytes = 0
        kept: deque[_Pending] = deque()
        note_index: int | None = None
        for item in self._queue:
            if (
                self._pending_bytes > target
                and item.type == "LOG"
                and not item.sent
                and isinstance(item.msg, str)
            ):
                dropped_lines += item.msg.count("\n") + 1
                dropped_bytes += item.size
                self._pending_bytes -= item.size
                if note_index is None:
                    note_index = len(kept)
                    kept.append(_Pending("LOG", ""))
                continue
            kept.append(item)
        if note_index is None:
            return
        self._dropped_lines += dropped_lines
        note = (
            f"[gyoza] the server was unreachable and the worker's event buffer was full: "
            f"{dropped_lines} log lines ({dropped_bytes} bytes) were dropped here"
        )
        kept[note_index].msg = note
        kept[note_index].size = len(note)
        self._pending_bytes += len(note)
        self._queue = kept
        log.warning("run %s: server unreachable, dropped %d buffered log lines", self.run_id, dropped_lines)

    # -- consumer side ----------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def wait_empty(self, timeout: float | None = None) -> bool:
        """Wait until every queued event is delivered (or dropped); False on timeout."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def drop(self, reason: str) -> None:
        """Forget every queued event and accept no more (the run may no longer report)."""
        if self.rejected is None:
            self.rejected = reason
        self._queue.clear()
        self._pending_bytes = 0
        self._empty.set()
        self._wake.set()

    async def close(self) -> None:
        """Stop the sender (after ``wait_empty`` if delivery matters)."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _send_loop(self) -> None:
        failures = 0
        while True:
            while not self._queue:
                if self._closed:
                    return
                self._empty.set()
                self._wake.clear()
                await self._wake.wait()
            item = self._queue[0]
            if item.seq is None:
                item.seq = self._next_seq
                self._next_seq += 1
            try:
                await self.client.add_event(
                    self.run_id, item.type, item.msg, item.payload, attempt=self.attempt, seq=item.seq
                )
            except GyozaAPIError as exc:
                if exc.status_code == 409 or exc.status_code == 404 or (
                    exc.status_code == 400 and exc.code == "locked"
                ):
                    reason = f"{exc.status_code} {exc.code}: {exc.detail}"
                    log.info("run %s attempt %d may no longer report (%s)", self.run_id, self.attempt, reason)
                    self.drop(reason)
                    if self._on_rejected is not None:
                        self._on_rejected(reason)
                    return
                if exc.status_code in (400, 413, 422):
                    # This one event is unacceptable; the rest still matter.
                    log.warning("run %s: server refused a %s event: %s", self.run_id, item.type, exc)
                    self._pop(item)
                    continue
                failures = await self._pause(failures, exc)
                continue
            except (httpx.TransportError, OSError) as exc:
                failures = await self._pause(failures, exc)
                continue
            if failures:
                log.info("run %s: server reachable again, delivering held events", self.run_id)
            failures = 0
            self._pop(item)

    def _pop(self, item: _Pending) -> None:
        if self._queue and self._queue[0] is item:
            self._queue.popleft()
            self._pending_bytes -= item.size
        if not self._queue:
            self._empty.set()

    async def _pause(self, failures: int, exc: BaseException) -> int:
        if failures == 0:
            log.warning(
                "run %s: cannot deliver events (%s: %s); holding them and retrying",
                self.run_id, type(exc).__name__, exc,
            )
        delay = min(self._max_backoff, self._backoff * (2**failures))
        await asyncio.sleep(random.uniform(delay / 2, delay))  # jitter: workers do not retry in step
        return failures + 1
