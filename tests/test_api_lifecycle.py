"""The whole lifecycle through the reference-client methods, against a real server."""

from __future__ import annotations

import httpx
import pytest

from gyoza.client import GyozaClient
from gyoza.testing import GyozaTestServer

from .conftest import RESOURCES, definition


def test_health_needs_no_key(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}


def test_run_from_definition_goes_from_queued_to_completed(client: GyozaClient):
    client.upsert_definition(definition())
    run = client.create_run_from_definition("hello", {"who": "world"})
    assert run["state"] == "PENDING" and run["attempt"] == 1
    assert (run["definition"], run["version"]) == ("hello", "1")

    client.heartbeat("w1", RESOURCES)
    ops = client.claim_ops("w1")
    assert [op["run_id"] for op in ops] == [run["id"]]
    assert ops[0]["inputs"] == {"who": "world"} and ops[0]["attempt"] == 1

    assert client.add_event(run["id"], "STARTED", "container up")["state"] == "RUNNING"
    assert client.add_event(run["id"], "PROGRESS", 40)["state"] == "RUNNING"
    assert client.add_event(run["id"], "LOG", "line 1\nline 2")["state"] == "RUNNING"
    done = client.add_event(run["id"], "COMPLETED", "", {"outputs": {"answer": 42}})
    assert done["state"] == "COMPLETED" and done["outputs"] == {"answer": 42}

    full = client.get_run(run["id"])
    assert [e["type"] for e in full["events"]] == [
        "QUEUED", "ASSIGNED", "STARTED", "PROGRESS", "LOG", "COMPLETED",
    ]
    assert [e["id"] for e in full["events"]] == [1, 2, 3, 4, 5, 6]
    assert full["events"][3]["msg"] == 40
    assert [a["state"] for a in full["attempts"]] == ["COMPLETED"]
    assert full["finished_at"] and full["started_at"]


def test_poll_events_returns_only_events_after_the_given_id(client):
    run = client.create_run("busybox", {})
    assert [e["id"] for e in client.poll_events(run["id"])["events"]] == [1]
    assert client.poll_events(run["id"], after=1) == {"events": []}


def test_get_attempts_lists_attempts_oldest_first(client):
    run = client.create_run("busybox", {}, retry_policy={"max_attempts": 2})
    client.update_run(run["id"], state="CANCELLED")
    client.retry_run(run["id"])
    attempts = client.get_attempts(run["id"])
    assert [a["number"] for a in attempts] == [1, 2]
    assert attempts[0]["reason"] == "CANCELLED" and attempts[1]["state"] == "PENDING"


def test_list_workers_shows_the_heartbeat(client):
    client.heartbeat("w1", RESOURCES, tags=["fast"])
    (worker,) = client.list_workers()
    assert worker["worker_id"] == "w1" and worker["tags"] == ["fast"]
    assert worker["status"] == "ONLINE"
    assert worker["free"] == {"cpu_cores": 4.0, "ram_mb": 8192, "gpu_ids": []}


def test_create_run_accepts_every_reference_client_option(client):
    run = client.create_run(
        "busybox",
        {"x": 1},
        priority=9,
        constraints={"cpu_cores": 0.5, "ram_mb": 64},
        retry_policy={"max_attempts": 5, "retry_on": ["FAILED", "LOST"]},
        event_delivery={"url": "http://127.0.0.1:9/hook", "secret": "s3cret"},
    )
    assert run["priority"] == 9 and run["constraints"]["cpu_cores"] == 0.5
    assert run["retry_policy"]["max_attempts"] == 5
    assert run["event_delivery"]["url"] == "http://127.0.0.1:9/hook"
    assert "secret" not in run["event_delivery"]


def test_a_fetched_run_can_be_resent_as_a_new_run(client):
    run = client.get_run(client.create_run("busybox", {"a": 1})["id"])
    again = client._http.post("/runs", json=run)
    assert again.status_code == 201 and again.json()["id"] != run["id"]


def test_list_runs_pages_newest_first_with_a_cursor(client):
    ids = [client.create_run("busybox", {"i": i})["id"] for i in range(5)]
    page = client.list_runs(limit=2)
    assert [r["id"] for r in page["runs"]] == ids[::-1][:2]
    rest = client.list_runs(limit=10, cursor=page["next_cursor"])
    assert [r["id"] for r in rest["runs"]] == ids[::-1][2:]
    assert rest["next_cursor"] is None


def test_list_runs_filters_by_state_and_definition(client):
    client.upsert_definition(definition("a"))
    a = client.create_run_from_definition("a", {})
    b = client.create_run("busybox", {})
    client.cancel_run(b["id"])
    assert [r["id"] for r in client.list_runs(definition="a")["runs"]] == [a["id"]]
    assert [r["id"] for r in client.list_runs(state="CANCELLED")["runs"]] == [b["id"]]


def test_unknown_run_is_404_with_error_body(client):
    with pytest.raises(httpx.HTTPStatusError) as info:
        client.get_run("nope")
    assert info.value.response.status_code == 404
    assert info.value.response.json()["error"] == "not_found"


def test_data_survives_a_server_restart_on_the_same_file(tmp_path):
    db = str(tmp_path / "g.db")
    with GyozaTestServer(db=db) as s, s.client() as c:
        c.upsert_definition(definition())
        run = c.create_run_from_definition("hello", {"n": 1})
        c.heartbeat("w1", RESOURCES)
        c.claim_ops("w1")
        c.add_event(run["id"], "STARTED", "")
    with GyozaTestServer(db=db) as s, s.client() as c:
        again = c.get_run(run["id"])
        assert again["state"] == "RUNNING" and again["inputs"] == {"n": 1}
        assert [e["type"] for e in again["events"]] == ["QUEUED", "ASSIGNED", "STARTED"]
        assert c.get_definition("hello")["version"] == "1"
        assert c.list_workers()[0]["worker_id"] == "w1"


def test_poll_events_with_wait_returns_as_soon_as_an_event_arrives(client, server):
    import threading
    import time

    run = client.create_run("busybox", {})
    client.heartbeat("w1", RESOURCES)
    client.claim_ops("w1")
    result: dict = {}

    def poll() -> None:
        with server.client() as c:
            started = time.monotonic()
            result["events"] = c.poll_events(run["id"], after=2, wait=20)["events"]
            result["took"] = time.monotonic() - started

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.3)
    client.add_event(run["id"], "LOG", "hello")
    t.join(timeout=10)
    assert [e["msg"] for e in result["events"]] == ["hello"]
    assert result["took"] < 5


def test_poll_events_with_wait_returns_at_once_for_a_terminal_run(client):
    run = client.create_run("busybox", {})
    client.cancel_run(run["id"])
    assert client.poll_events(run["id"], after=99, wait=20) == {"events": []}
