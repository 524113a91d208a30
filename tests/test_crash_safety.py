"""Crash safety: SIGKILL the real server mid-load; every acknowledged write survives.

`gyoza server` runs as a subprocess. Client threads create runs, heartbeat,
claim and post events (with attempt and seq), and record every 2xx answer.
At a seeded random moment the server is SIGKILLed, restarted on the same
file, and every acknowledged write must be there: runs, claims (attempts
and their workers), events in order with gapless ids, the outbox rows of
webhook deliveries, and `PRAGMA integrity_check` says ok.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
import pytest

from gyoza.client import GyozaAPIError, GyozaClient

pytestmark = pytest.mark.slow

THREADS = 4
HOOK = {"url": "http://127.0.0.1:9/hook", "max_attempts": 1}  # nobody listens: stays in the outbox
RETRY = {"max_attempts": 3, "retry_on": ["FAILED"], "backoff_s": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, port: int, log, sync: str = "normal", extra: tuple[str, ...] = ()) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gyoza.cli", "server", "--db", db, "--port", str(port),
         "--heartbeat-interval", "5", "--worker-timeout", "3600", "--sync", sync, *extra],
        stdout=log, stderr=log, env={**os.environ, "GYOZA_API_KEY": ""},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gyoza server exited at start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("gyoza server did not answer /healthz")


@dataclass
class Acked:
    """Everything the server answered 2xx to."""

    runs: dict[str, dict] = field(default_factory=dict)  # id -> creation answer
    claims: list[tuple[str, int, str]] = field(default_factory=list)  # run, attempt, worker
    events: dict[str, list[tuple[int, int, str, str]]] = field(
        default_factory=lambda: defaultdict(list)  # run -> [(attempt, seq, type, msg)]
    )
    final: dict[str, str] = field(default_factory=dict)  # run -> state its last ack reported
    failures: list[str] = field(default_factory=list)  # any non-2xx answer: a bug
    lock: threading.Lock = field(default_factory=threading.Lock)
    count: int = 0  # acknowledged writes so far

    def tick(self) -> None:
        self.count += 1  # under self.lock


def drive(url: str, n: int, acked: Acked, stop: threading.Event, seed: int) -> None:
    """One client: create, heartbeat, claim, run the op through events."""
    rnd = random.Random(seed * 100 + n)
    worker = f"w{n}"
    try:
        with GyozaClient(url, timeout=10) as c:
            c.heartbeat(worker, {"cpu_cores": 4, "ram_mb": 8192, "gpus": []})
            while not stop.is_set():
                hook = rnd.random() < 0.5
                run = c.create_run(
                    "busybox", {"n": n}, retry_policy=RETRY, event_delivery=HOOK if hook else None
                )
                with acked.lock:
                    acked.runs[run["id"]] = run
                    acked.final[run["id"]] = run["state"]
                    acked.tick()
                for op in c.claim(worker, max=1)["ops"]:
                    rid, attempt = op["run_id"], op["attempt"]
                    with acked.lock:
                        acked.claims.append((rid, attempt, worker))
                        acked.tick()
                    steps = [("STARTED", "")] + [("LOG", f"line {i} of {rid}") for i in range(3)]
                    steps.append(("FAILED", "boom") if rnd.random() < 0.3 else ("COMPLETED", "done"))
                    for seq, (type_, msg) in enumerate(steps):
                        payload = {"outputs": {"seq": seq}} if type_ == "COMPLETED" else None
                        out = c.add_event(rid, type_, msg, payload, attempt=attempt, seq=seq)
                        with acked.lock:
                            acked.events[rid].append((attempt, seq, type_, msg))
                            acked.final[rid] = out["state"]
                            acked.tick()
    except httpx.TransportError:
        return  # the server is gone: what is unanswered is unknown, not acknowledged
    except GyozaAPIError as exc:
        with acked.lock:
            acked.failures.append(f"{worker}: {exc}")


def verify(url: str, acked: Acked) -> dict[str, int]:
    counts = defaultdict(int)
    with GyozaClient(url, timeout=30) as c:
        for rid, created in acked.runs.items():
            run = c.get_run(rid)  # 404 here: an acknowledged run was lost
            counts["runs"] += 1
            assert run["inputs"] == created["inputs"]
            events = run["events"]
            assert [e["id"] for e in events] == list(range(1, len(events) + 1)), rid
            assert len(run["attempts"]) == run["attempt"], rid
            # Acknowledged events are stored, in the order they were acknowledged.
            stored = [(e["attempt"], e["seq"], e["type"], e["msg"]) for e in events if e["seq"] is not None]
            want = acked.events.get(rid, [])
            positions = [stored.index(ev) for ev in want]  # ValueError: a lost event
            assert positions == sorted(positions), f"events of {rid} out of order"
            counts["events"] += len(want)
            if acked.final[rid] in ("COMPLETED", "FAILED"):
                assert run["state"] == acked.final[rid], rid
            if created["event_delivery"] is not None:
                wanted = {e["id"] for e in events if e["type"] != "LOG"}
                delivered = {d["event_id"] for d in c.list_deliveries(rid)}
                assert delivered == wanted, f"outbox rows of {rid} lost"
                counts["deliveries"] += len(wanted)
        for rid, attempt, worker in acked.claims:
            att = c.get_attempts(rid)[attempt - 1]
            assert att["number"] == attempt and att["worker_id"] == worker, (rid, att)
            counts["claims"] += 1
    return dict(counts)


def integrity(db: str) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


@pytest.mark.parametrize(
    "seed, sync", [(1, "normal"), (2, "normal"), (3, "full")], ids=["kill-1", "kill-2", "kill-3-full"]
)
def test_sigkill_loses_no_acknowledged_write(tmp_path, seed, sync):
    db = str(tmp_path / "gyoza.db")
    log = open(tmp_path / "server.log", "wb")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(db, port, log, sync)
    acked = Acked()
    stop = threading.Event()
    try:
        threads = [
            threading.Thread(target=drive, args=(url, n, acked, stop, seed), daemon=True)
            for n in range(THREADS)
        ]
        for t in threads:
            t.start()
        # The kill point: after a seeded number of acknowledged writes, plus a
        # seeded few milliseconds so that it lands inside some request.
        rnd = random.Random(seed)
        target, extra = rnd.randint(60, 250), rnd.uniform(0, 0.02)
        deadline = time.monotonic() + 60
        while acked.count < target and time.monotonic() < deadline and not acked.failures:
            time.sleep(0.002)
        time.sleep(extra)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(15)
        assert not acked.failures, acked.failures
        assert acked.count >= target, "the load did not reach the kill point"

        proc = start_server(db, port, log, sync)
        counts = verify(url, acked)
        print(f"seed {seed}: verified {counts} after SIGKILL")
        # The restarted server keeps working on the same file.
        with GyozaClient(url) as c:
            assert c.create_run("busybox", {})["state"] == "PENDING"
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    integrity(db)
