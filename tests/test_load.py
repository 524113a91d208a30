"""Concurrency and load: 64 concurrent clients for a bounded time.

Submitters create runs and poll them, workers heartbeat, claim and post
events, watchers list runs and long-poll events. Asserted: no 5xx, no
"database is locked" anywhere (answers or server log), no unexpected 4xx,
every created run accounted for with its events. Latency p50/p99 is printed,
not asserted.
"""

from __future__ import annotations

import asyncio
import random
import signal
import statistics
import time
from collections import Counter, defaultdict

import httpx
import pytest

from gyoza.client import GyozaClient

from .test_crash_safety import free_port, start_server

pytestmark = pytest.mark.slow

CLIENTS = 64
WORKERS = 8
WATCHERS = 8
DURATION_S = 8.0


class Load:
    def __init__(self, url: str) -> None:
        self.url = url
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.created: set[str] = set()
        self.completed: set[str] = set()
        self.deadline = time.monotonic() + DURATION_S

    async def call(self, http: httpx.AsyncClient, what: str, method: str, path: str, **kw) -> httpx.Response | None:
        t0 = time.perf_counter()
        r = await http.request(method, path, **kw)
        self.latency[what].append(time.perf_counter() - t0)
        self.statuses[r.status_code] += 1
        if r.status_code >= 400 or "locked" in r.text[:300].lower() and what != "poll":
            self.errors.append(f"{what} {method} {path}: {r.status_code} {r.text[:200]}")
            return None
        return r

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def submitter(self, n: int) -> None:
        rnd = random.Random(n)
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            while self.running():
                body = {"image": "busybox", "inputs": {"n": n}, "priority": rnd.randint(0, 9),
                        "constraints": {"cpu_cores": 0.5, "ram_mb": 64}}
                r = await self.call(http, "create", "POST", "/runs", json=body)
                if r is None:
                    continue
                rid = r.json()["id"]
                self.created.add(rid)
                await self.call(http, "get", "GET", f"/runs/{rid}")
                await self.call(http, "poll", "GET", f"/runs/{rid}/events", params={"after": 0})

    async def worker(self, n: int) -> None:
        wid = f"load-w{n}"
        hb = {"worker_id": wid, "resources": {"cpu_cores": 4, "ram_mb": 4096, "gpus": []}}
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            while self.running():
                await self.call(http, "heartbeat", "POST", "/workers/heartbeat", json=hb)
                r = await self.call(http, "claim", "POST", f"/workers/{wid}/claim", params={"max": 4})
                if r is None:
                    continue
                for op in r.json()["ops"]:
                    rid, attempt = op["run_id"], op["attempt"]
                    for seq, (type_, msg) in enumerate(
                        [("STARTED", ""), ("LOG", "line 1\nline 2"), ("PROGRESS", 50), ("COMPLETED", "")]
                    ):
                        ev = {"type": type_, "msg": msg, "attempt": attempt, "seq": seq}
                        if await self.call(http, "event", "POST", f"/runs/{rid}/events", json=ev) is None:
                            break
                    else:
                        self.completed.add(rid)

    async def watcher(self, n: int) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            while self.running():
                r = await self.call(http, "list", "GET", "/runs", params={"limit": 20})
                if r is None or not r.json()["runs"]:
                    await asyncio.sleep(0.01)
                    continue
                rid = r.json()["runs"][0]["id"]
                await self.call(http, "long-poll", "GET", f"/runs/{rid}/events",
                                params={"after": 1, "wait": 0.2})
                await self.call(http, "workers", "GET", "/workers")

    async def run(self) -> None:
        tasks = [self.worker(n) for n in range(WORKERS)]
        tasks += [self.watcher(n) for n in range(WATCHERS)]
        tasks += [self.submitter(n) for n in range(CLIENTS - WORKERS - WATCHERS)]
        await asyncio.gather(*tasks)


def test_64_clients_mixing_writes_and_polls(tmp_path):
    # The server in its own process (as in production): the clients' event
    # loop does not compete with it for the GIL.
    log_path = tmp_path / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = start_server(str(tmp_path / "gyoza.db"), port, log)
        try:
            load = Load(url)
            asyncio.run(load.run())
            check(load, url)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    logged = log_path.read_text(errors="replace")
    assert "database is locked" not in logged
    assert "Traceback" not in logged and " ERROR " not in logged, logged[-3000:]


def check(load: Load, url: str) -> None:
    """No errors, and every created run accounted for."""
    lines = []
    for what, xs in sorted(load.latency.items()):
        xs.sort()
        p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
        lines.append(f"  {what:10s} n={len(xs):6d}  p50={statistics.median(xs) * 1000:7.1f} ms"
                     f"  p99={p99 * 1000:7.1f} ms")
    total = sum(load.statuses.values())
    print(f"\n{CLIENTS} clients, {DURATION_S:.0f} s, {total} requests ({total / DURATION_S:.0f}/s), "
          f"statuses {dict(load.statuses)}\n" + "\n".join(lines))

    assert not load.errors, load.errors[:10]
    assert all(status < 500 for status in load.statuses)
    assert load.created and load.completed, "the load did no work"

    # Every created run is accounted for: listed once, with its events.
    with GyozaClient(url, timeout=60) as c:
        seen: list[str] = []
        cursor = None
        while True:
            page = c.list_runs(limit=1000, cursor=cursor)
            seen += [r["id"] for r in page["runs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen))
        assert load.created <= set(seen)
        for rid in sorted(load.completed)[:50]:
            run = c.get_run(rid)
            assert run["state"] == "COMPLETED"
            assert [e["type"] for e in run["events"]] == [
                "QUEUED", "ASSIGNED", "STARTED", "LOG", "PROGRESS", "COMPLETED"
            ]
        states = Counter(c.get_run(rid)["state"] for rid in sorted(load.created)[:200])
        assert set(states) <= {"PENDING", "ASSIGNED", "RUNNING", "COMPLETED"}, states
