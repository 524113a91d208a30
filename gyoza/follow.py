"""Following a run live: ``gyoza run --follow`` and ``gyoza runs logs --follow``.

:func:`follow` long-polls ``GET /runs/{id}/events?after=N&wait=20`` (never a
sleep loop) and hands each event to a :class:`Renderer`, until an event
leaves the run in a terminal state. A lost connection is retried with
backoff for a while (the server may be restarting) before giving up.

:class:`Renderer` prints state changes as ``[HH:MM:SS] STATE  detail``
lines, LOG events as their raw lines, and PROGRESS as a bar: redrawn in
place on a terminal, one line per 10 % step otherwise (CI logs stay short).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import IO, Any

import httpx

from .client import GyozaClient

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
BAR_WIDTH = 30
# The state each event normally leaves the run in; any other is shown ("-> PENDING").
IMPLIED = {
    "QUEUED": "PENDING",
    "ASSIGNED": "ASSIGNED",
    "STARTED": "RUNNING",
    "COMPLETED": "COMPLETED",
    "FAILED": "FAILED",
    "CANCELLED": "CANCELLED",
    "RETRYING": "PENDING",
}


def bar(pct: float, width: int = BAR_WIDTH) -> str:
    pct = min(max(pct, 0.0), 100.0)
    filled = int(round(width * pct / 100))
    return "[" + "#" * filled + "-" * (width - filled) + "]" + f" {_pct(pct):>4}"


def _pct(pct: float) -> str:
    return f"{int(pct)}%" if float(pct).is_integer() else f"{pct:.1f}%"


def _clock(t: str | None) -> str:
    # "2026-11-28T07:15:02.123456Z" -> "07:15:02"
    if t and "T" in t:
        return t.split("T", 1)[1][:8]
    return "--:--:--"


def _compact(data: Any, limit: int = 500) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Renderer:
    """Turns events into terminal output on ``stream``."""

    def __init__(self, stream: IO[str], *, tty: bool, logs_only: bool = False) -> None:
        self.stream = stream
        self.tty = tty
        self.logs_only = logs_only
        self.state: str | None = None
        self.attempt: int | None = None
        self.progress: float | None = None
        self._bar_shown = False
        self._last_step: int | None = None

    # -- low level ---------------------------------------------------------------

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self._write("\r\x1b[2K")
            self._bar_shown = False

    def _draw_bar(self) -> None:
        if self.tty and self.progress is not None and self.state not in TERMINAL:
            self._write("\r\x1b[2K" + bar(self.progress))
            self._bar_shown = True

    def line(self, text: str) -> None:
        self._clear_bar()
        self._write(text + "\n")
        self._draw_bar()

    # -- events ------------------------------------------------------------------

    def event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type", "?")
        msg = ev.get("msg")
        payload = ev.get("payload") or {}
        self.state = ev.get("state", self.state)
        attempt = ev.get("attempt")
        if kind == "LOG":
            for text in str(msg).splitlines() or [""]:
                self.line(text)
            return
        if self.logs_only:
            return
        if kind == "PROGRESS":
            try:
                pct = float(msg)
            except (TypeError, ValueError):
                return
            self.progress = pct
            if self.tty:
                self._draw_bar()
                return
            step = int(min(max(pct, 0), 100) // 10)
            if step != self._last_step:
                self._last_step = step
                self.line(f"[{_clock(ev.get('t'))}] {'PROGRESS':<10} {bar(pct)}")
            return
        detail = ""
        if isinstance(msg, str) and msg:
            detail = msg
        if kind == "QUEUED" and attempt is not None:
            # The server's msg ("queued", "attempt 2 queued") would repeat us.
            extra = "" if detail in ("", "queued") or "attempt" in detail else f": {detail}"
            detail = f"attempt {attempt}{extra}"
        elif kind == "COMPLETED" and isinstance(payload.get("outputs"), dict):
            detail = "outputs " + _compact(payload["outputs"])
        elif kind == "FAILED" and payload.get("error_message"):
            detail = str(payload["error_message"]).splitlines()[0]
            if payload.get("reason") == "TIMEOUT":
                detail = "timeout: " + detail
        state = ev.get("state")
        if state and IMPLIED.get(kind) != state:
            detail = (detail + " " if detail else "") + f"-> {state}"
        self.attempt = attempt if attempt is not None else self.attempt
        self.line(f"[{_clock(ev.get('t'))}] {kind:<10} {detail}".rstrip())

    def close(self) -> None:
        self._clear_bar()


def follow(
    client: GyozaClient,
    run_id: str,
    renderer: Renderer,
    *,
    after: int = 0,
    wait: float = 20.0,
    reconnect_s: float = 120.0,
    notice: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Render the run's events until it is terminal; return the final run.

    API errors (401, 404...) propagate. A connection failure before the first
    answer propagates at once; after it (the server restarting under us) it is
    retried with backoff for ``reconnect_s`` seconds, then propagates.
    """
    lost_since: float | None = None
    delay = 0.5
    connected = False
    try:
        while True:
            try:
                page = client.poll_events(run_id, after, wait=wait)
                events = page.get("events", [])
                if not events:
                    # The long-poll answers at once for a terminal run, and
                    # after ``wait`` seconds otherwise: check which it was.
                    run = client.get_run(run_id)
                    if run.get("state") in TERMINAL and not _newer(run, after):
                        return run
            except httpx.TransportError:
                if not connected:
                    raise  # never reached the server: say so at once
                now = time.monotonic()
                if lost_since is None:
                    lost_since = now
                    if notice:
                        notice(f"lost the connection to the server; retrying for {int(reconnect_s)}s")
                if now - lost_since > reconnect_s:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            connected = True
            if lost_since is not None and notice:
                notice("reconnected")
            lost_since, delay = None, 0.5
            for ev in events:
                renderer.event(ev)
                after = max(after, int(ev.get("id", after)))
            if events and events[-1].get("state") in TERMINAL:
                return client.get_run(run_id)
    finally:
        renderer.close()


def _newer(run: dict[str, Any], after: int) -> bool:
    return any(int(e.get("id", 0)) > after for e in run.get("events") or [])


def summary(run: dict[str, Any]) -> str:
    """The last line of a followed run."""
    from .cliutil import duration

    state = run.get("state")
    took = duration(run.get("started_at") or run.get("created_at"), run.get("finished_at"))
    head = f"run {run.get('id')} {state}"
    if state == "COMPLETED":
        return f"{head} in {took}"
    if state == "FAILED":
        attempts = f"attempt {run.get('attempt')}/{(run.get('retry_policy') or {}).get('max_attempts', '?')}"
        error = (run.get("error") or "").strip().splitlines()
        return f"{head} ({attempts})" + (f": {error[0]}" if error else "")
    return head
