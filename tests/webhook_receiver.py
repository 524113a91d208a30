"""A real webhook receiver on loopback (http.server in a thread) for the webhook tests.

It records every request and answers according to a plan: fail the first
N requests of each message with 503, answer 410, hold requests open (to
have some in flight when a server is killed), or call a custom function.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int  # what the receiver answered
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def run_id(self) -> str:
        return self.json["data"]["run"]["id"]

    @property
    def event_id(self) -> int:
        return self.json["data"]["event"]["id"]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Receiver:
    status: int = 204
    fail_first: int = 0  # answer 503 to the first N requests of each webhook-id
    fail_status: int = 503
    extra_headers: dict[str, str] = field(default_factory=dict)  # on failure answers
    plan: Callable[[Received, int], int] | None = None  # (request, nth try of its id) -> status
    hold: bool = False  # keep requests open until release()
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._tries: Counter[str] = Counter()
        self._released = threading.Event()
        self._in_flight_per_run: Counter[str] = Counter()
        self.max_in_flight = 0
        self.max_in_flight_per_run = 0
        self._in_flight = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra = receiver._answer(headers, body)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                payload = b"" if status == 204 else b"ok"
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def _answer(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        rec = Received(headers, body, 0, time.monotonic())
        try:
            run_id = rec.run_id
        except (ValueError, KeyError):
            run_id = ""
        with self._lock:
            self._tries[rec.webhook_id] += 1
            nth = self._tries[rec.webhook_id]
            self._in_flight += 1
            self._in_flight_per_run[run_id] += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self.max_in_flight_per_run = max(
                self.max_in_flight_per_run, self._in_flight_per_run[run_id]
            )
            hold = self.hold
        try:
            if hold:
                self._released.wait(30)
                status = self.fail_status
            elif self.plan is not None:
                status = self.plan(rec, nth)
            elif nth <= self.fail_first:
                status = self.fail_status
            else:
                status = self.status
        finally:
            with self._lock:
                self._in_flight -= 1
                self._in_flight_per_run[run_id] -= 1
        rec.status = status
        with self._lock:
            self.requests.append(rec)
        return status, (self.extra_headers if not 200 <= status < 300 else {})

    # -- views -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/hook"

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def delivered(self) -> list[Received]:
        return [r for r in self.snapshot() if r.ok]

    def delivered_counts(self) -> Counter[str]:
        return Counter(r.webhook_id for r in self.delivered())

    def held(self) -> int:
        with self._lock:
            return self._in_flight

    def by_run(self, only_ok: bool = False) -> dict[str, list[int]]:
        """Event ids per run, in the order the requests arrived."""
        out: dict[str, list[int]] = defaultdict(list)
        for r in sorted(self.snapshot(), key=lambda r: r.at):
            if r.ok or not only_ok:
                out[r.run_id].append(r.event_id)
        return dict(out)

    def release(self) -> None:
        self.hold = False
        self._released.set()

    def close(self) -> None:
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()
