"""Webhook delivery end to end: a real gyoza server and a real receiver on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gyoza.client import GyozaAPIError, GyozaClient
from gyoza.testing import GyozaTestServer
from tests.webhook_receiver import Receiver

WORKER = "w1"
BIG = {"cpu_cores": 1000, "ram_mb": 1 << 30, "gpus": []}
FAST = {"webhook_backoff_s": 0.05, "webhook_max_backoff_s": 0.2, "webhook_timeout": 2.0}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def server(tmp_path) -> Iterator[GyozaTestServer]:
    with GyozaTestServer(db=str(tmp_path / "gyoza.db"), **FAST) as s:
        yield s


@pytest.fixture
def client(server: GyozaTestServer) -> Iterator[GyozaClient]:
    with server.client() as c:
        c.heartbeat(WORKER, BIG)
        yield c


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def start_run(client: GyozaClient, delivery: dict[str, Any]) -> str:
    """A run with this delivery, claimed by the worker (QUEUED, ASSIGNED)."""
    run_id = client.create_run("busybox", {}, event_delivery=delivery)["id"]
    assert run_id in [op["run_id"] for op in client.claim_ops(WORKER)]
    return run_id


def finish(client: GyozaClient, run_id: str, progress: int = 2) -> None:
    client.add_event(run_id, "STARTED", "go")
    for i in range(progress):
        client.add_event(run_id, "LOG", f"line {i}")
        client.add_event(run_id, "PROGRESS", (i + 1) * 10)
    client.add_event(run_id, "COMPLETED", "done")


def event_types(client: GyozaClient, run_id: str) -> dict[int, str]:
    return {e["id"]: e["type"] for e in client.poll_events(run_id)["events"]}


def settled(client: GyozaClient, run_id: str, n: int | None = None) -> list[dict[str, Any]] | None:
    ds = client.list_deliveries(run_id)
    if (n is None or len(ds) == n) and ds and all(d["status"] != "PENDING" for d in ds):
        return ds
    return None


def wait_settled(client: GyozaClient, run_id: str, n: int | None = None, timeout: float = 10.0):
    return wait_until(lambda: settled(client, run_id, n), timeout, f"deliveries of {run_id} to settle")


# -- what is sent -------------------------------------------------------------------------------


def test_default_filter_sends_every_event_but_log(client, receiver) -> None:
    run_id = start_run(client, {"url": receiver.url})
    finish(client, run_id)
    types = event_types(client, run_id)
    wanted = sorted(i for i, t in types.items() if t != "LOG")
    wait_settled(client, run_id, len(wanted))
    got = [r.json for r in receiver.delivered()]
    assert [g["data"]["event"]["id"] for g in got] == wanted
    assert [g["type"] for g in got] == [f"run.{types[i]}" for i in wanted]
    assert "run.LOG" not in {g["type"] for g in got}


def test_explicit_event_filter_sends_only_listed_types(client, receiver) -> None:
    run_id = start_run(client, {"url": receiver.url, "events": ["LOG", "COMPLETED"]})
    finish(client, run_id)
    wait_settled(client, run_id, 3)
    assert [r.json["type"] for r in receiver.delivered()] == ["run.LOG", "run.LOG", "run.COMPLETED"]


def test_definition_delivery_applies_to_its_runs(client, receiver) -> None:
    client.upsert_definition(
        {"name": "hooked", "version": "1", "image": "busybox",
         "event_delivery": {"url": receiver.url, "events": ["QUEUED"]}}
    )
    run_id = client.create_run_from_definition("hooked", {})["id"]
    wait_settled(client, run_id, 1)
    assert [r.run_id for r in receiver.delivered()] == [run_id]


def test_body_is_the_run_and_event_in_standard_webhooks_shape(client, receiver) -> None:
    run_id = start_run(client, {"url": receiver.url, "events": ["COMPLETED"]})
    finish(client, run_id, progress=0)
    wait_settled(client, run_id, 1)
    (req,) = receiver.delivered()
    body = req.json
    assert body["type"] == "run.COMPLETED"
    assert body["timestamp"] == body["data"]["event"]["t"]
    assert body["data"]["run"]["id"] == run_id
    assert body["data"]["event"]["type"] == "COMPLETED"
    assert "events" not in body["data"]["run"] or not body["data"]["run"]["events"]
    assert req.headers["content-type"] == "application/json"


def test_request_is_signed_over_id_timestamp_and_body(client, receiver) -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    run_id = start_run(client, {"url": receiver.url, "secret": secret, "events": ["QUEUED"]})
    wait_settled(client, run_id, 1)
    (req,) = receiver.delivered()
    msg_id, ts = req.headers["webhook-id"], req.headers["webhook-timestamp"]
    assert abs(int(ts) - time.time()) < 30
    mac = hmac.new(
        b"0123456789abcdef0123456789abcdef", f"{msg_id}.{ts}.".encode() + req.body, hashlib.sha256
    ).digest()
    assert req.headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_plain_secret_signs_with_its_bytes_and_extra_headers_are_sent(client, receiver) -> None:
    delivery = {"url": receiver.url, "secret": "plain-s3cret", "events": ["QUEUED"],
                "headers": {"X-Team": "ml", "Authorization": "Bearer abc"}}
    run_id = start_run(client, delivery)
    wait_settled(client, run_id, 1)
    (req,) = receiver.delivered()
    ts = req.headers["webhook-timestamp"]
    mac = hmac.new(b"plain-s3cret", f"{req.webhook_id}.{ts}.".encode() + req.body, hashlib.sha256)
    assert req.headers["webhook-signature"] == "v1," + base64.b64encode(mac.digest()).decode()
    assert req.headers["x-team"] == "ml"
    assert req.headers["authorization"] == "Bearer abc"


def test_no_signature_header_without_a_secret(client, receiver) -> None:
    run_id = start_run(client, {"url": receiver.url, "events": ["QUEUED"]})
    wait_settled(client, run_id, 1)
    (req,) = receiver.delivered()
    assert "webhook-signature" not in req.headers
    assert req.headers["webhook-id"] and req.headers["webhook-timestamp"]


# -- retries --------------------------------------------------------------------------------------


def test_receiver_failing_twice_then_succeeding_gets_every_event_in_order(client, receiver) -> None:
    receiver.fail_first = 2
    run_id = start_run(client, {"url": receiver.url})
    finish(client, run_id)
    types = event_types(client, run_id)
    wanted = sorted(i for i, t in types.items() if t != "LOG")
    ds = wait_settled(client, run_id, len(wanted))
    assert {d["status"] for d in ds} == {"DELIVERED"}
    assert {d["attempts"] for d in ds} == {3}
    # Every request (failed ones too) in event order: n+1 never before n is done.
    assert receiver.by_run()[run_id] == [i for i in wanted for _ in range(3)]
    assert receiver.by_run(only_ok=True)[run_id] == wanted
    # The webhook-id is stable across the retries of one delivery.
    ids_per_event: dict[int, set[str]] = {}
    for r in receiver.snapshot():
        ids_per_event.setdefault(r.event_id, set()).add(r.webhook_id)
    assert all(len(v) == 1 for v in ids_per_event.values())


def test_http_410_stops_retrying_at_once(client, receiver) -> None:
    receiver.status = 410
    run_id = start_run(client, {"url": receiver.url, "events": ["QUEUED"], "max_attempts": 5})
    (d,) = wait_settled(client, run_id, 1)
    assert d["status"] == "FAILED"
    assert d["attempts"] == 1
    assert d["last_status_code"] == 410
    assert "410" in d["last_error"]
    time.sleep(0.3)  # several backoff periods: still one request
    assert len(receiver.snapshot()) == 1


def test_max_attempts_marks_failed_with_last_error(client, receiver) -> None:
    receiver.status = 500
    run_id = start_run(client, {"url": receiver.url, "events": ["QUEUED"], "max_attempts": 3})
    (d,) = wait_settled(client, run_id, 1)
    assert (d["status"], d["attempts"], d["last_status_code"]) == ("FAILED", 3, 500)
    assert d["last_error"] == "HTTP 500"
    assert d["next_attempt_at"] is None
    assert len(receiver.snapshot()) == 3


def test_connection_refused_is_retried_then_failed(client) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    run_id = start_run(client, {"url": f"http://127.0.0.1:{port}/", "events": ["QUEUED"],
                                "max_attempts": 2})
    (d,) = wait_settled(client, run_id, 1)
    assert (d["status"], d["attempts"], d["last_status_code"]) == ("FAILED", 2, None)
    assert "Connect" in d["last_error"]


def test_slow_receiver_times_out_and_is_retried(tmp_path, receiver) -> None:
    def plan(req, nth):
        if nth == 1:
            time.sleep(1.0)
        return 200

    receiver.plan = plan
    with GyozaTestServer(db=str(tmp_path / "g.db"), **{**FAST, "webhook_timeout": 0.3}) as s:
        with s.client() as c:
            c.heartbeat(WORKER, BIG)
            run_id = start_run(c, {"url": receiver.url, "events": ["QUEUED"]})
            (d,) = wait_settled(c, run_id, 1)
    assert (d["status"], d["attempts"]) == ("DELIVERED", 2)


def test_retry_after_is_honoured(client, receiver) -> None:
    receiver.fail_first = 1
    receiver.extra_headers = {"Retry-After": "1"}
    run_id = start_run(client, {"url": receiver.url, "events": ["QUEUED"]})
    wait_settled(client, run_id, 1)
    first, second = receiver.snapshot()
    # Backoff alone would retry after ~0.05 s; the cap (0.2 s in these tests) bounds Retry-After.
    assert 0.15 <= second.at - first.at < 1.0


def test_redeliver_requeues_a_failed_delivery(client, receiver) -> None:
    receiver.status = 500
    run_id = start_run(client, {"url": receiver.url, "events": ["QUEUED"], "max_attempts": 1})
    (d,) = wait_settled(client, run_id, 1)
    assert d["status"] == "FAILED"
    with pytest.raises(GyozaAPIError) as exc:
        client.redeliver(run_id, 999)
    assert exc.value.status_code == 404
    receiver.status = 200
    again = client.redeliver(run_id, d["id"])
    assert again["status"] in ("PENDING", "DELIVERED")
    (d2,) = wait_settled(client, run_id, 1)
    assert (d2["status"], d2["attempts"]) == ("DELIVERED", 1)
    assert receiver.delivered_counts() == {d["webhook_id"]: 1}
    with pytest.raises(GyozaAPIError) as exc:
        client.redeliver(run_id, d["id"])  # DELIVERED: nothing to requeue
    assert exc.value.status_code == 400


# -- validation and secrecy -------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd", "example.com/hook"])
def test_non_http_url_is_refused_with_400(client, url) -> None:
    with pytest.raises(GyozaAPIError) as exc:
        client.create_run("busybox", {}, event_delivery={"url": url})
    assert exc.value.status_code == 400
    assert "http" in exc.value.detail
    with pytest.raises(GyozaAPIError) as exc:
        client.upsert_definition(
            {"name": "bad", "version": "1", "image": "busybox", "event_delivery": {"url": url}}
        )
    assert exc.value.status_code == 400


def test_secret_never_appears_in_api_responses_or_logs(server, client, receiver, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "TOPSECRET-do-not-leak"
    delivery = {"url": receiver.url, "secret": secret}
    client.upsert_definition({"name": "s", "version": "1", "image": "busybox",
                              "event_delivery": delivery})
    run_id = start_run(client, delivery)
    client.create_run_from_definition("s", {})
    receiver.fail_first = 1  # exercise the retry log lines too
    finish(client, run_id, progress=1)
    wait_settled(client, run_id)
    raw = httpx.Client(base_url=server.url)
    texts = [
        raw.get(f"/runs/{run_id}").text,
        raw.get("/runs").text,
        raw.get("/definitions/s").text,
        raw.get("/definitions").text,
        raw.get(f"/runs/{run_id}/deliveries").text,
        raw.get(f"/runs/{run_id}/events").text,
    ]
    raw.close()
    assert all(secret not in t for t in texts)
    assert json.loads(texts[0])["event_delivery"]["url"] == receiver.url
    signatures = {r.headers["webhook-signature"] for r in receiver.snapshot()}
    assert caplog.records, "expected the sender to log something"
    for rec in caplog.records:
        line = rec.getMessage()
        assert secret not in line
        assert not any(sig in line or sig.split(",", 1)[1] in line for sig in signatures)


# -- durability and scale -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_server(db: str, port: int, log_path: str) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "gyoza.cli", "server", "--db", db, "--port", str(port)],
        stdout=log, stderr=log, env={**os.environ, "GYOZA_API_KEY": ""},
    )
    log.close()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 20, "the server's /healthz")
    return proc


def test_pending_deliveries_survive_sigkill_and_none_is_sent_twice(tmp_path, receiver) -> None:
    db, port, log_path = str(tmp_path / "g.db"), free_port(), str(tmp_path / "server.log")
    secret = "kill-test-secret"
    proc = spawn_server(db, port, log_path)
    try:
        with GyozaClient(f"http://127.0.0.1:{port}") as c:
            c.heartbeat(WORKER, BIG)
            delivery = {"url": receiver.url, "secret": secret}
            runs = [start_run(c, delivery) for _ in range(3)]
            for run_id in runs:  # phase 1: delivered and recorded before the crash
                wait_settled(c, run_id, 2)
            before = receiver.delivered_counts()
            assert sum(before.values()) == 6
            receiver.hold = True  # phase 2: requests stay in flight, the rest queue behind them
            for run_id in runs:
                finish(c, run_id)
            wait_until(lambda: receiver.held() == 3, 10, "a request in flight for each run")
            pending = [d for r in runs for d in c.list_deliveries(r) if d["status"] == "PENDING"]
            assert len(pending) == 3 * 4
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        receiver.release()  # the held requests end with 503s nobody reads
        wait_until(lambda: receiver.held() == 0, 5, "held requests to end")
        proc = spawn_server(db, port, log_path)
        with GyozaClient(f"http://127.0.0.1:{port}") as c:
            for run_id in runs:
                ds = wait_settled(c, run_id, 6, timeout=15)
                assert {d["status"] for d in ds} == {"DELIVERED"}
            expected = {d["webhook_id"] for r in runs for d in c.list_deliveries(r)}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    counts = receiver.delivered_counts()
    assert set(counts) == expected
    assert all(n == 1 for n in counts.values()), counts  # none twice after a success
    for run_id, ids in receiver.by_run(only_ok=True).items():
        assert ids == sorted(ids), f"run {run_id} out of order: {ids}"
    with open(log_path, encoding="utf-8", errors="replace") as f:
        assert secret not in f.read()


def test_50_runs_of_20_events_concurrently_all_delivered_in_order(tmp_path, receiver) -> None:
    def plan(req, nth: int) -> int:
        time.sleep(0.002)  # long enough for requests to overlap
        # Every 7th message fails once, so retries and ordering interleave.
        return 503 if nth == 1 and hash(req.webhook_id) % 7 == 0 else 200

    receiver.plan = plan
    with GyozaTestServer(db=str(tmp_path / "g.db"), webhook_concurrency=8, **FAST) as s:
        with s.client() as c:
            c.heartbeat(WORKER, BIG)
            delivery = {"url": receiver.url, "secret": "whsec_c2VjcmV0"}
            runs = [c.create_run("busybox", {}, event_delivery=delivery)["id"] for _ in range(50)]
            assert len(c.claim_ops(WORKER)) == 50

        def drive(chunk: list[str]) -> None:
            with s.client() as wc:
                for run_id in chunk:
                    wc.add_event(run_id, "STARTED", "go")
                for i in range(16):  # QUEUED + ASSIGNED + STARTED + 16 + COMPLETED = 20
                    for run_id in chunk:
                        wc.add_event(run_id, "LOG" if i % 4 == 3 else "PROGRESS", i)
                for run_id in chunk:
                    wc.add_event(run_id, "COMPLETED", "done")

        threads = [threading.Thread(target=drive, args=(runs[i::10],)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with s.client() as c:
            expected: dict[str, list[int]] = {}
            for run_id in runs:
                types = event_types(c, run_id)
                assert len(types) == 20
                expected[run_id] = sorted(i for i, t in types.items() if t != "LOG")
            total = sum(len(v) for v in expected.values())
            wait_until(lambda: len(receiver.delivered_counts()) >= total, 30, "all deliveries")
            for run_id in runs[:5]:
                assert {d["status"] for d in wait_settled(c, run_id)} == {"DELIVERED"}
    assert receiver.by_run(only_ok=True) == expected
    assert all(n == 1 for n in receiver.delivered_counts().values())
    for run_id, ids in receiver.by_run().items():  # failed tries too: never ahead of order
        assert ids == sorted(ids), run_id
    assert receiver.max_in_flight_per_run == 1
    assert 1 < receiver.max_in_flight <= 8
