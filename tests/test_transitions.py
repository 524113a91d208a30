"""Every row of the SPEC §2 transition table, allowed and refused."""

from __future__ import annotations

import httpx
import pytest

from .conftest import RESOURCES

EVENTS = ["STARTED", "PROGRESS", "LOG", "COMPLETED", "FAILED", "CANCELLED"]
PAYLOAD = {"COMPLETED": {"outputs": {"ok": True}}, "FAILED": {"error_message": "boom", "exit_code": 2}}


def msg_for(event: str):
    return 10 if event == "PROGRESS" else "m"


def make_run(client, state: str, *, max_attempts: int = 1) -> str:
    """A run in ``state`` (PENDING, ASSIGNED, RUNNING or a terminal one)."""
    run = client.create_run("busybox", {}, retry_policy={"max_attempts": max_attempts})
    rid = run["id"]
    if state == "PENDING":
        return rid
    client.heartbeat("w1", RESOURCES)
    assert [op["run_id"] for op in client.claim_ops("w1")] == [rid]
    if state == "ASSIGNED":
        return rid
    client.add_event(rid, "STARTED", "")
    if state == "RUNNING":
        return rid
    client.add_event(rid, state, "", PAYLOAD.get(state))
    assert client.get_run(rid)["state"] == state
    return rid


def status_of(client, rid: str, event: str) -> tuple[int, str]:
    body = {"type": event, "msg": msg_for(event)}
    if event in PAYLOAD:
        body["payload"] = PAYLOAD[event]
    r = client._http.post(f"/runs/{rid}/events", json=body)
    return r.status_code, (r.json().get("state") if r.status_code == 200 else r.json()["error"])


EXPECTED = {
    "PENDING": {"STARTED": 400, "PROGRESS": 400, "LOG": 400, "COMPLETED": 400, "FAILED": 400,
                "CANCELLED": "CANCELLED"},
    "ASSIGNED": {"STARTED": "RUNNING", "PROGRESS": "ASSIGNED", "LOG": "ASSIGNED",
                 "COMPLETED": "COMPLETED", "FAILED": "FAILED", "CANCELLED": "CANCELLED"},
    "RUNNING": {"STARTED": 400, "PROGRESS": "RUNNING", "LOG": "RUNNING",
                "COMPLETED": "COMPLETED", "FAILED": "FAILED", "CANCELLED": "CANCELLED"},
}


@pytest.mark.parametrize("start", ["PENDING", "ASSIGNED", "RUNNING"])
@pytest.mark.parametrize("event", EVENTS)
def test_transition_table(client, start, event):
    rid = make_run(client, start)
    code, result = status_of(client, rid, event)
    expected = EXPECTED[start][event]
    if expected == 400:
        assert (code, result) == (400, "invalid")
        assert client.get_run(rid)["state"] == start, "a refused event changes nothing"
    else:
        assert (code, result) == (200, expected)


@pytest.mark.parametrize("terminal", ["COMPLETED", "FAILED", "CANCELLED"])
@pytest.mark.parametrize("event", EVENTS)
def test_terminal_runs_are_locked(client, terminal, event):
    rid = make_run(client, terminal)
    before = client.get_run(rid)
    assert status_of(client, rid, event) == (400, "locked")
    assert client.get_run(rid) == before


@pytest.mark.parametrize("event", ["QUEUED", "ASSIGNED", "LOST", "RETRYING"])
def test_server_only_events_are_refused(client, event):
    rid = make_run(client, "RUNNING")
    r = client._http.post(f"/runs/{rid}/events", json={"type": event, "msg": ""})
    assert r.status_code == 400 and "server only" in r.json()["detail"]


@pytest.mark.parametrize("value", [-1, 101, "lots", 1e300])
def test_progress_must_be_a_number_from_0_to_100(client, value):
    rid = make_run(client, "RUNNING")
    r = client._http.post(f"/runs/{rid}/events", json={"type": "PROGRESS", "msg": value})
    assert r.status_code == 400 and "PROGRESS" in r.json()["detail"]


def test_failed_with_a_retryable_reason_requeues_with_the_next_attempt(client):
    run = client.create_run("busybox", {}, retry_policy={"max_attempts": 2, "retry_on": ["FAILED"], "backoff_s": 0})
    client.heartbeat("w1", RESOURCES)
    client.claim_ops("w1")
    after = client.add_event(run["id"], "FAILED", "", {"error_message": "boom", "exit_code": 3})
    assert (after["state"], after["attempt"], after["worker_id"]) == ("PENDING", 2, None)
    types = [e["type"] for e in client.get_run(run["id"])["events"]]
    assert types[-3:] == ["FAILED", "RETRYING", "QUEUED"]
    first = client.get_attempts(run["id"])[0]
    assert (first["reason"], first["exit_code"], first["error"]) == ("FAILED", 3, "boom")


def test_failed_on_the_last_attempt_ends_the_run(client):
    rid = make_run(client, "RUNNING", max_attempts=1)
    out = client.add_event(rid, "FAILED", "", {"error_message": "boom", "exit_code": 1})
    assert out["state"] == "FAILED" and out["error"] == "boom"


def test_stale_attempt_is_409_before_the_transition_rules(client):
    rid = make_run(client, "COMPLETED")
    r = client._http.post(f"/runs/{rid}/events", json={"type": "LOG", "msg": "x", "attempt": 7})
    assert r.status_code == 409 and r.json()["error"] == "stale_attempt"


def test_resent_event_with_the_same_seq_is_stored_once(client):
    rid = make_run(client, "RUNNING")
    body = {"type": "LOG", "msg": "hello", "attempt": 1, "seq": 5}
    first = client._http.post(f"/runs/{rid}/events", json=body)
    second = client._http.post(f"/runs/{rid}/events", json=body)
    assert first.status_code == second.status_code == 200
    logs = [e for e in client.get_run(rid)["events"] if e["type"] == "LOG"]
    assert len(logs) == 1 and logs[0]["seq"] == 5


# -- PATCH -------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["PENDING", "ASSIGNED"])
def test_patch_cannot_set_pending_or_assigned(client, state):
    rid = make_run(client, "RUNNING")
    with pytest.raises(httpx.HTTPStatusError) as info:
        client.update_run(rid, state=state)
    assert info.value.response.status_code == 400


def test_patch_to_failed_is_final_even_when_retries_remain(client):
    run = client.create_run("busybox", {}, retry_policy={"max_attempts": 3, "retry_on": ["FAILED"]})
    client.heartbeat("w1", RESOURCES)
    client.claim_ops("w1")
    out = client.update_run(run["id"], state="FAILED")
    assert (out["state"], out["attempt"]) == ("FAILED", 1)


def test_patch_to_running_acts_as_started(client):
    rid = make_run(client, "ASSIGNED")
    assert client.update_run(rid, state="RUNNING")["state"] == "RUNNING"
    assert client.get_run(rid)["events"][-1]["type"] == "STARTED"


def test_patch_cancel_on_pending_run(client):
    rid = make_run(client, "PENDING")
    assert client.update_run(rid, state="CANCELLED")["state"] == "CANCELLED"


def test_patch_priority_while_not_terminal(client):
    rid = make_run(client, "PENDING")
    assert client.update_run(rid, priority=77)["priority"] == 77


def test_patch_priority_on_a_terminal_run_is_locked(client):
    rid = make_run(client, "COMPLETED")
    r = client._http.patch(f"/runs/{rid}", json={"priority": 1})
    assert (r.status_code, r.json()["error"]) == (400, "locked")


def test_patch_outputs_with_completed_sets_both(client):
    rid = make_run(client, "RUNNING")
    out = client.update_run(rid, state="COMPLETED", outputs={"score": 0.9})
    assert (out["state"], out["outputs"]) == ("COMPLETED", {"score": 0.9})


def test_patch_outputs_while_running_keeps_state(client):
    rid = make_run(client, "RUNNING")
    out = client.update_run(rid, outputs={"partial": 1})
    assert (out["state"], out["outputs"]) == ("RUNNING", {"partial": 1})


def test_patch_outputs_on_a_terminal_run_is_locked(client):
    rid = make_run(client, "FAILED")
    r = client._http.patch(f"/runs/{rid}", json={"outputs": {"x": 1}})
    assert r.status_code == 400


def test_patch_with_an_unknown_state_names_the_field(client):
    rid = make_run(client, "PENDING")
    r = client._http.patch(f"/runs/{rid}", json={"state": "DONE"})
    assert r.status_code == 400 and r.json()["detail"].startswith("state")


# -- retry ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["PENDING", "ASSIGNED", "RUNNING", "COMPLETED"])
def test_retry_only_from_failed_or_cancelled(client, state):
    rid = make_run(client, state, max_attempts=3)
    r = client._http.post(f"/runs/{rid}/retry")
    assert r.status_code == 400


@pytest.mark.parametrize("state", ["FAILED", "CANCELLED"])
def test_retry_reopens_as_a_new_attempt_claimable_at_once(client, state):
    rid = make_run(client, state, max_attempts=3)
    out = client.retry_run(rid)
    assert (out["state"], out["attempt"]) == ("PENDING", 2)
    assert [e["type"] for e in client.get_run(rid)["events"]][-2:] == ["RETRYING", "QUEUED"]
    assert [op["run_id"] for op in client.claim_ops("w1")] == [rid]


def test_retry_refused_when_attempts_are_used_up(client):
    rid = make_run(client, "FAILED", max_attempts=1)
    r = client._http.post(f"/runs/{rid}/retry")
    assert r.status_code == 400 and "max_attempts" in r.json()["detail"]
