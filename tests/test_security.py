"""Security: API keys on every non-public route, secrets never leave the server,
and an unusable database file is refused cleanly and left untouched.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest
from starlette.routing import Route

from gyoza.client import GyozaClient
from gyoza.config import ServerConfig
from gyoza.openapi import is_public, is_ui
from gyoza.server import build_app

from .test_crash_safety import free_port, start_server
from .webhook_receiver import Receiver

KEY = "gz-key-Q9v7XlT2pR4m"
WEBHOOK_SECRET = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTQyNDI0Mg=="
PLAIN_SECRET = "plain-webhook-secret-7f3a9c"


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the app, read from the app itself."""
    app = build_app(ServerConfig())
    found = []
    for route in app.routes:
        if isinstance(route, Route):
            found += [(m, route.path) for m in route.methods or () if m != "HEAD"]
    assert len(found) >= 18
    return found


def concrete(path: str) -> str:
    for name, value in (("{run_id}", "r1"), ("{name}", "hello"), ("{worker_id}", "w1"),
                        ("{delivery_id}", "1")):
        path = path.replace(name, value)
    return path


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A real `gyoza server` process with an API key, its log captured."""
    tmp = tmp_path_factory.mktemp("keyed")
    port = free_port()
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        proc = start_server(str(tmp / "gyoza.db"), port, log, extra=("--api-key", KEY))
        proc.log_path = log_path
        proc.url = f"http://127.0.0.1:{port}"
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


GUARDED = [(m, p) for m, p in app_routes() if not is_public(p)]
OPEN = [(m, p) for m, p in app_routes() if is_public(p) and not is_ui(p)]


@pytest.mark.parametrize("method, path", GUARDED)
def test_every_guarded_route_refuses_a_missing_or_wrong_key(keyed, method, path):
    wrong_keys = [None, "", "wrong", KEY.lower(), KEY + "x", KEY[:-1], KEY * 2]
    for key in wrong_keys:
        headers = {} if key is None else {"X-API-Key": key}
        r = httpx.request(method, keyed.url + concrete(path), headers=headers, json={}, timeout=10)
        assert r.status_code == 401, (method, path, key, r.status_code)
        assert r.json()["error"] == "unauthorized"
    # Bytes that are not UTF-8 in the header: still a clean 401.
    r = httpx.request(method, keyed.url + concrete(path), headers=[(b"X-API-Key", b"\xff\xfe")], timeout=10)
    assert r.status_code == 401
    # The right key gets past the check (whatever the route then answers).
    r = httpx.request(method, keyed.url + concrete(path), headers={"X-API-Key": KEY}, json={}, timeout=10)
    assert r.status_code != 401, (method, path)


@pytest.mark.parametrize("method, path", OPEN)
def test_public_routes_need_no_key(keyed, method, path):
    r = httpx.request(method, keyed.url + path, timeout=10)
    assert r.status_code == 200


def test_only_healthz_and_openapi_are_public():
    assert {p for _, p in OPEN} == {"/healthz", "/openapi.json"}


def test_secrets_and_keys_never_appear_in_answers_or_logs(keyed):
    """Webhook secrets are write-only; API keys are never echoed or logged."""
    receiver = Receiver()
    answers: list[str] = []
    try:
        with GyozaClient(keyed.url, api_key=KEY) as c:
            hook = {"url": receiver.url, "secret": WEBHOOK_SECRET}
            answers.append(str(c.upsert_definition(
                {"name": "sec", "version": "1", "image": "busybox", "event_delivery": hook}
            )))
            answers.append(str(c.get_definition("sec")))
            answers.append(str(c.list_definitions()))
            from_def = c.create_run_from_definition("sec", {})
            adhoc = c.create_run("busybox", {}, event_delivery={"url": receiver.url, "secret": PLAIN_SECRET})
            answers += [str(from_def), str(adhoc)]
            c.heartbeat("w-sec", {"cpu_cores": 8, "ram_mb": 8192, "gpus": []})
            claimed = c.claim("w-sec")
            answers.append(str(claimed))
            for op in claimed["ops"]:
                answers.append(str(c.add_event(op["run_id"], "STARTED", "", attempt=op["attempt"])))
                answers.append(str(c.add_event(op["run_id"], "COMPLETED", "", attempt=op["attempt"])))
            for rid in (from_def["id"], adhoc["id"]):
                answers += [str(c.get_run(rid)), str(c.poll_events(rid)), str(c.list_deliveries(rid))]
            answers.append(str(c.list_runs()))
            answers.append(str(c.list_workers()))
            answers.append(httpx.get(keyed.url + "/openapi.json").text)
        # Failed authentications with other keys, to see that they are not logged either.
        for bad in ("not-the-key-1234", KEY + "-typo"):
            httpx.get(keyed.url + "/runs", headers={"X-API-Key": bad})
        deadline = time.monotonic() + 10
        while len(receiver.delivered()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.delivered(), "no webhook was delivered"
        sent = [str(r.headers) + r.body.decode() for r in receiver.snapshot()]
    finally:
        receiver.close()
    keyed.send_signal(signal.SIGTERM)  # flush and close the log
    keyed.wait(30)
    logged = keyed.log_path.read_text(errors="replace")
    assert "gyoza server on" in logged  # the log was captured
    for secret in (WEBHOOK_SECRET, PLAIN_SECRET, "c2VjcmV0LXNpZ25pbmcta2V5LTQyNDI0Mg", KEY,
                   "not-the-key-1234"):
        for text in answers:
            assert secret not in text
        for text in sent:
            assert secret not in text, "a webhook request carried the secret itself"
        assert secret not in logged, f"{secret!r} in the server log"


# -- an unusable database file ---------------------------------------------------------


def run_server(db: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gyoza.cli", "server", "--db", db, "--port", str(free_port())],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "GYOZA_API_KEY": ""},
    )


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_garbage(path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def make_foreign_sqlite(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('alice')")
    conn.commit()
    conn.close()


def make_newer_gyoza(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE gyoza_schema (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO gyoza_schema VALUES (999)")
    conn.commit()
    conn.close()


def make_corrupt_gyoza(path) -> None:
    """A real gyoza database whose pages were overwritten in the middle."""
    run = subprocess.Popen(
        [sys.executable, "-c",
         "import asyncio, sys\n"
         "from gyoza.store import Store\n"
         "async def main():\n"
         "    s = Store(sys.argv[1])\n"
         "    await s.open()\n"
         "    await s.close()\n"
         "asyncio.run(main())\n", str(path)],
    )
    assert run.wait(30) == 0
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=DELETE")  # fold the WAL into the file
    conn.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 8192
    data[4096:8192] = os.urandom(4096)  # page 2 onwards: schema tables
    path.write_bytes(bytes(data))


def make_text_file(path) -> None:
    path.write_text("this is my diary, not a database\n" * 100)


@pytest.mark.parametrize(
    "make",
    [make_garbage, make_foreign_sqlite, make_newer_gyoza, make_corrupt_gyoza, make_text_file],
    ids=["random-bytes", "foreign-sqlite", "newer-gyoza", "corrupt-gyoza", "text-file"],
)
def test_unusable_database_gives_one_clear_line_and_is_left_untouched(tmp_path, make):
    db = tmp_path / "gyoza.db"
    make(db)
    before = digest(db)
    siblings = set(os.listdir(tmp_path))
    result = run_server(str(db))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and str(db) in lines[0], lines[0]
    assert digest(db) == before, "the file was modified"
    assert set(os.listdir(tmp_path)) == siblings, "files were created next to it"


def test_database_path_that_is_a_directory_or_unreachable(tmp_path):
    for db in (tmp_path, tmp_path / "missing-dir" / "gyoza.db"):
        result = run_server(str(db))
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
