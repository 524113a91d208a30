"""Liveness (SPEC §4): OFFLINE workers, LOST runs, retries with backoff, reconciliation.

The ``server`` fixture heartbeats every 0.5 s and declares a worker OFFLINE
after 2 s of silence; ``quick`` (for tests that wait for OFFLINE) after 1 s.
"""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest

from gyoza.testing import GyozaTestServer
from tests.fake_worker import FakeWorker, resources, wait_until

IMAGE = "busybox:latest"
INTERVAL = 0.5  # the fixture's heartbeat interval


def run(client, retry: dict | None = None, **constraints) -> str:
    cons = {"cpu_cores": 1, "ram_mb": 256, **constraints}
    return client.create_run(IMAGE, {}, constraints=cons, retry_policy=retry)["id"]


def when(event: dict) -> float:
    return datetime.fromisoformat(event["t"].replace("Z", "+00:00")).timestamp()


def events_of(client, rid: str, type_: str) -> list[dict]:
    return [e for e in client.get_run(rid)["events"] if e["type"] == type_]


def offline(client, worker_id: str) -> bool:
    return any(w["worker_id"] == worker_id and w["status"] == "OFFLINE" for w in client.list_workers())


@pytest.fixture
def quick(tmp_path):
    """A client of a server that declares workers OFFLINE after 1 s (for tests that wait for it)."""
    with GyozaTestServer(db=str(tmp_path / "quick.db"), heartbeat_interval=0.25, worker_timeout=1.0) as s:
        with s.client() as c:
            yield c


def omit_after_an_interval(w: FakeWorker, rid: str) -> dict:
    """Let a run's assignment age past one interval, then stop reporting it."""
    time.sleep(INTERVAL + 0.2)
    w.forget(rid)
    return w.heartbeat()


# -- OFFLINE ------------------------------------------------------------------------------


def test_a_worker_silent_past_the_timeout_becomes_offline(quick):
    w = FakeWorker(quick, "w1")
    w.heartbeat()
    assert w.status()["status"] == "ONLINE"
    wait_until(lambda: offline(quick, "w1"), timeout=10)


def test_claims_count_as_a_sign_of_life(client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    deadline = time.monotonic() + 2.4  # longer than the 2 s timeout
    while time.monotonic() < deadline:
        w.claim()
        assert w.status()["status"] == "ONLINE"
        time.sleep(0.2)


def test_a_worker_waiting_in_a_long_poll_claim_stays_online_and_keeps_its_runs(quick):
    w = FakeWorker(quick, "w1", resources(cpu=1))
    w.heartbeat()
    rid = run(quick)
    w.claim()
    w.start(rid)
    assert w.claim(wait=1.8) == {"ops": [], "cancel": []}  # longer than the 1 s timeout
    assert w.status()["status"] == "ONLINE"
    assert quick.get_run(rid)["state"] == "RUNNING"


def test_runs_of_an_offline_worker_are_lost_and_requeued_as_a_new_attempt(quick):
    w = FakeWorker(quick, "w1")
    w.heartbeat()
    rid = run(quick)
    w.claim()
    w.start(rid)
    wait_until(lambda: quick.get_run(rid)["attempt"] == 2, timeout=10)
    got = quick.get_run(rid)
    assert (got["state"], got["worker_id"], got["gpu_ids"]) == ("PENDING", None, [])
    assert [e["type"] for e in got["events"]] == [
        "QUEUED", "ASSIGNED", "STARTED", "LOST", "RETRYING", "QUEUED"
    ]
    first, second = got["attempts"]
    assert (first["state"], first["reason"], first["worker_id"]) == ("FAILED", "LOST", "w1")
    assert "OFFLINE" in first["error"]
    assert (second["number"], second["state"]) == (2, "PENDING")
    listed = w.status()
    assert (listed["status"], listed["running_ops"], listed["free"]["cpu_cores"]) == ("OFFLINE", [], 4)


def test_a_requeued_run_is_not_claimable_before_its_backoff_and_is_after(client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    rid = run(client, retry={"backoff_s": 2.0})
    w.claim()
    lost_at = when(omit_after_an_interval(w, rid) and events_of(client, rid, "LOST")[0])
    assert client.get_run(rid)["state"] == "PENDING"
    assert w.claim_ids() == []
    assert w.claim_ids(wait=10) == [rid]
    assigned_at = when(events_of(client, rid, "ASSIGNED")[-1])
    assert assigned_at - lost_at >= 2.0 - 0.01


def test_backoff_grows_by_the_factor_per_attempt_up_to_the_cap(client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    policy = {"max_attempts": 4, "retry_on": ["FAILED"], "backoff_s": 0.2, "backoff_factor": 2,
              "max_backoff_s": 0.5}
    rid = run(client, retry=policy)
    assert w.claim_ids() == [rid]
    for delay in (0.2, 0.4, 0.5):
        w.fail(rid)
        failed_at = when(events_of(client, rid, "FAILED")[-1])
        assert w.claim_ids(wait=5) == [rid]
        assigned_at = when(events_of(client, rid, "ASSIGNED")[-1])
        assert assigned_at - failed_at >= delay - 0.01
    w.fail(rid)
    assert client.get_run(rid)["state"] == "FAILED"


def test_a_lost_run_fails_after_max_attempts_and_its_attempts_keep_every_reason(client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    policy = {"max_attempts": 3, "retry_on": ["FAILED", "LOST"], "backoff_s": 0}
    rid = run(client, retry=policy)
    assert w.claim_ids() == [rid]
    w.start(rid)
    w.fail(rid, exit_code=3, error="exit code 3: first")
    assert w.claim_ids() == [rid]
    omit_after_an_interval(w, rid)
    assert w.claim_ids() == [rid]
    omit_after_an_interval(w, rid)
    got = client.get_run(rid)
    assert (got["state"], got["attempt"]) == ("FAILED", 3)
    assert "no longer reports" in got["error"]
    assert [(a["number"], a["state"], a["reason"], a["exit_code"]) for a in got["attempts"]] == [
        (1, "FAILED", "FAILED", 3),
        (2, "FAILED", "LOST", None),
        (3, "FAILED", "LOST", None),
    ]
    assert got["attempts"][0]["error"] == "exit code 3: first"
    assert "no longer reports" in got["attempts"][1]["error"]
    types = [e["type"] for e in got["events"]]
    assert (types.count("RETRYING"), types[-1]) == (2, "LOST")
    assert w.claim_ids() == []


def test_a_lost_run_without_lost_in_retry_on_ends_failed(client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    rid = run(client, retry={"retry_on": ["FAILED"]})
    w.claim()
    omit_after_an_interval(w, rid)
    got = client.get_run(rid)
    assert (got["state"], got["attempt"], got["attempts"][0]["reason"]) == ("FAILED", 1, "LOST")
    assert got["events"][-1]["type"] == "LOST"


# -- running_ops reconciliation --------------------------------------------------------------


def test_a_heartbeat_omitting_a_run_assigned_over_an_interval_ago_loses_it(client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    rid = run(client)
    w.claim()
    omit_after_an_interval(w, rid)
    got = client.get_run(rid)
    assert (got["state"], got["attempt"]) == ("PENDING", 2)
    assert got["attempts"][0]["reason"] == "LOST"


def test_a_heartbeat_omitting_a_just_assigned_run_keeps_it(client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    rid = run(client)
    w.claim()
    w.heartbeat(running_ops=[])
    assert client.get_run(rid)["state"] == "ASSIGNED"


def test_a_heartbeat_without_running_ops_does_not_reconcile(client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    rid = run(client)
    w.claim()
    time.sleep(INTERVAL + 0.2)
    w.heartbeat(running_ops=None)
    assert client.get_run(rid)["state"] == "ASSIGNED"


def test_a_heartbeat_reporting_its_runs_keeps_them(client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    rid = run(client)
    w.claim()
    w.start(rid)
    time.sleep(INTERVAL + 0.2)
    answer = w.heartbeat()
    assert answer["cancel"] == []
    assert [op["run_id"] for op in answer["running_ops"]] == [rid]
    assert client.get_run(rid)["state"] == "RUNNING"


def test_a_reported_run_that_was_cancelled_is_in_the_heartbeat_cancel(client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    rid = run(client)
    w.claim()
    client.cancel_run(rid)
    assert w.heartbeat()["cancel"] == [rid]


def test_a_reported_run_the_server_ended_is_in_the_heartbeat_cancel(client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    rid = run(client)
    w.claim()
    client.update_run(rid, state="FAILED")
    assert w.heartbeat()["cancel"] == [rid]


def test_a_reported_run_moved_to_another_attempt_is_in_the_heartbeat_cancel(client):
    w1, w2 = FakeWorker(client, "w1"), FakeWorker(client, "w2")
    w1.heartbeat()
    rid = run(client, retry={"backoff_s": 0})
    w1.claim()
    stale = dict(w1.held[rid])
    omit_after_an_interval(w1, rid)
    w2.heartbeat()
    assert w2.claim_ids() == [rid]
    assert w1.heartbeat(running_ops=[{"run_id": rid, "attempt": stale["attempt"]}])["cancel"] == [rid]
    assert w2.heartbeat()["cancel"] == []


def test_a_reported_run_the_server_never_gave_this_worker_is_in_the_heartbeat_cancel(client):
    w1, w2 = FakeWorker(client, "w1"), FakeWorker(client, "w2")
    w1.heartbeat()
    rid = run(client)
    w1.claim()
    assert w2.heartbeat(running_ops=[{"run_id": rid, "attempt": 1}])["cancel"] == [rid]
    assert w2.heartbeat(running_ops=[{"run_id": "f" * 32, "attempt": 1}])["cancel"] == ["f" * 32]
    assert client.get_run(rid)["state"] == "ASSIGNED"


# -- cancel ----------------------------------------------------------------------------------


def test_a_cancelled_run_keeps_its_reservation_until_the_worker_stops_reporting_it(client):
    w = FakeWorker(client, "w1", resources(cpu=1))
    w.heartbeat()
    first = run(client)
    w.claim()
    w.start(first)
    assert client.cancel_run(first)["state"] == "CANCELLED"
    second = run(client)
    assert w.claim() == {"ops": [], "cancel": [first]}
    assert w.heartbeat()["cancel"] == [first]
    assert w.status()["free"]["cpu_cores"] == 0
    w.forget(first)
    answer = w.heartbeat()
    assert answer["cancel"] == []
    assert answer["free"]["cpu_cores"] == 1
    assert w.claim_ids() == [second]


def test_a_run_a_user_ends_by_patch_keeps_its_reservation_until_the_worker_stops_it(client):
    w = FakeWorker(client, "w1", resources(cpu=1))
    w.heartbeat()
    first = run(client)
    w.claim()
    w.start(first)
    client.update_run(first, state="COMPLETED", outputs={"by": "hand"})
    second = run(client)
    assert w.claim() == {"ops": [], "cancel": [first]}
    w.forget(first)
    w.heartbeat()
    assert w.claim_ids() == [second]


def test_a_cancelled_run_frees_its_reservation_when_its_worker_goes_offline(quick):
    w = FakeWorker(quick, "w1", resources(cpu=1))
    w.heartbeat()
    rid = run(quick)
    w.claim()
    quick.cancel_run(rid)
    wait_until(lambda: offline(quick, "w1"), timeout=10)
    assert w.status()["free"]["cpu_cores"] == 1
    got = quick.get_run(rid)
    assert (got["state"], got["attempt"]) == ("CANCELLED", 1)


def test_an_event_for_a_cancelled_run_gets_400_locked(client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    rid = run(client)
    w.claim()
    client.cancel_run(rid)
    with pytest.raises(httpx.HTTPStatusError) as err:
        w.event(rid, "LOG", "still running")
    assert err.value.response.status_code == 400
    assert err.value.response.json()["error"] == "locked"


def test_cancelling_a_pending_run_ends_it_at_once(client):
    rid = run(client)
    got = client.cancel_run(rid)
    assert (got["state"], got["finished_at"] is not None) == ("CANCELLED", True)
    w = FakeWorker(client, "w1")
    w.heartbeat()
    assert w.claim() == {"ops": [], "cancel": []}


# -- a worker that comes back --------------------------------------------------------------------


def test_a_worker_that_comes_back_is_online_and_its_stale_attempt_gets_409(quick):
    w = FakeWorker(quick, "w1")
    w.heartbeat()
    rid = run(quick)
    w.claim()
    w.start(rid)
    wait_until(lambda: offline(quick, "w1"), timeout=10)
    answer = w.heartbeat()
    assert answer["status"] == "ONLINE"
    assert answer["cancel"] == [rid]
    with pytest.raises(httpx.HTTPStatusError) as err:
        w.event(rid, "COMPLETED", "", {"outputs": {}})
    assert err.value.response.status_code == 409
    got = quick.get_run(rid)
    assert (got["state"], got["attempt"]) == ("PENDING", 2)


def test_scheduling_says_no_worker_online_once_the_only_worker_goes_offline(quick):
    w = FakeWorker(quick, "w1", resources(cpu=1))
    w.heartbeat()
    busy = run(quick)
    w.claim()
    waiting = run(quick)
    assert quick.get_run(waiting)["scheduling"] is None
    wait_until(lambda: offline(quick, "w1"), timeout=10)
    assert quick.get_run(waiting)["scheduling"] == "no worker online"
    assert quick.get_run(busy)["scheduling"] == "no worker online"


def test_the_liveness_clock_continues_from_the_last_heartbeat_across_a_restart(tmp_path):
    server = GyozaTestServer(db=str(tmp_path / "g.db"), heartbeat_interval=0.25, worker_timeout=2.0)
    with server, server.client() as client:
        w = FakeWorker(client, "w1")
        w.heartbeat()
        rid = run(client)
        w.claim()
        server.stop()
        time.sleep(2.1)
        server.start()
        # A clock restarted at start-up would wait 2 s more; the persisted one is already due.
        wait_until(lambda: offline(client, "w1"), timeout=1.5)
        got = client.get_run(rid)
        assert (got["state"], got["attempt"], got["attempts"][0]["reason"]) == ("PENDING", 2, "LOST")


def test_scheduling_follows_a_worker_that_goes_offline_and_comes_back(quick):
    w = FakeWorker(quick, "w1", resources(cpu=1), tags=["gpu-box"])
    other = FakeWorker(quick, "w2", resources(cpu=8))
    w.heartbeat()
    rid = run(quick, tags=["gpu-box"])
    assert quick.get_run(rid)["scheduling"] is None
    wait_until(lambda: offline(quick, "w1"), timeout=10)
    other.heartbeat()
    assert quick.get_run(rid)["scheduling"] == "needs tag 'gpu-box'; no online worker has it"
    w.heartbeat()
    assert quick.get_run(rid)["scheduling"] is None



def test_a_retried_run_is_claimable_at_once_while_its_old_container_still_counts(client):
    """Retry right after cancel: the old container may still be stopping."""
    box = {"cpu_cores": 1, "ram_mb": 1000, "gpus": [{"id": 0, "vram_mb": 1000}]}
    client.heartbeat("w1", box)
    client.heartbeat("w2", box)
    run = client.create_run("img", {}, constraints={"cpu_cores": 1, "ram_mb": 1000, "gpus": 1},
                            retry_policy={"max_attempts": 2})
    assert [o["run_id"] for o in client.claim_ops("w1")] == [run["id"]]
    client.cancel_run(run["id"])
    assert client.retry_run(run["id"])["state"] == "PENDING"
    # w1 still reports attempt 1: its resources stay counted and it must stop it,
    # while attempt 2 goes to a worker with room at once.
    hb = client.heartbeat("w1", box, running_ops=[{"run_id": run["id"], "attempt": 1}])
    assert run["id"] in hb["cancel"]
    assert hb["free"] == {"cpu_cores": 0.0, "ram_mb": 0, "gpu_ids": []}
    assert client.claim_ops("w1") == []
    ops = client.claim_ops("w2")
    assert [(o["run_id"], o["attempt"]) for o in ops] == [(run["id"], 2)]
    # Once w1 stops reporting the old attempt, its resources are free again.
    hb = client.heartbeat("w1", box, running_ops=[])
    assert hb["free"] == {"cpu_cores": 1.0, "ram_mb": 1000, "gpu_ids": [0]}
    assert hb["cancel"] == []
