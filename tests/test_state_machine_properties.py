"""Stateful property test: random create / claim / heartbeat / event / PATCH /
retry / worker-timeout sequences against the real app over HTTP, checked
against a small reference model after every step.

Invariants:
- terminal runs never change (only `retry` reopens FAILED or CANCELLED);
- `attempt` equals the number of attempts;
- a run is on at most one worker;
- per-worker reservations never exceed the worker's resources (and equal
  what the model expects: a retried run's old container keeps its share
  until its worker stops reporting it; a cancelled run stays reserved until its worker
  stops reporting it);
- event ids strictly increase per run (1, 2, 3... and append-only);
- every LOST/FAILED attempt is followed by a requeue iff the policy says so.

Workers are simulated by the test (no Docker). Each example gets its own
worker and run tag, so runs of earlier examples never fit its workers.
The worker timeout is exercised by running the server's own liveness check
(`expire_workers`) with a cutoff that falls between two known contacts.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gyoza.testing import GyozaTestServer

pytestmark = pytest.mark.slow

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
ACTIVE = {"ASSIGNED", "RUNNING"}
CPU_MILLI = 4000  # every worker: 4 cores
PATCH_FAILED = "set to FAILED by PATCH"
_examples = itertools.count()
RUN_SPEC = st.tuples(
    st.sampled_from([500, 1000, 2000, 3000]),  # cpu millicores
    st.integers(0, 3),  # priority
    st.integers(1, 3),  # retry_policy.max_attempts
    st.sets(st.sampled_from(["FAILED", "LOST", "TIMEOUT"])),  # retry_policy.retry_on
)


@dataclass
class MRun:
    id: str
    seq: int
    cpu: int  # millicores
    priority: int
    max_attempts: int
    retry_on: list[str]
    state: str = "PENDING"
    attempt: int = 1
    worker: str | None = None  # the worker it is ASSIGNED/RUNNING on
    reserved_on: str | None = None  # the worker whose capacity it holds
    lingering: tuple[str, int] | None = None  # (worker, attempt) of a retried run's old container
    events: list[int] = field(default_factory=list)  # ids seen so far
    snapshot: dict | None = None  # what a terminal run must stay
    next_seq: int = 0  # the worker's event counter for the current attempt


@dataclass
class MWorker:
    id: str
    online: bool = True
    containers: dict[str, int] = field(default_factory=dict)  # run -> attempt it runs
    contact: float = 0.0  # time.time() just after its last heartbeat/claim answer


@pytest.fixture(scope="module")
def live():
    # Liveness only when the test says so: a huge timeout and interval.
    with GyozaTestServer(heartbeat_interval=10_000, worker_timeout=1_000_000) as s:
        yield s


def expire_workers_before(server: GyozaTestServer, cutoff: float) -> list[str]:
    """Run the server's liveness check: workers silent since before ``cutoff`` go OFFLINE."""
    service = server._server.config.app.state.service
    loop = service._tasks[0].get_loop()

    async def check() -> list[str]:
        gone, fx = await service.store.expire_workers(time.time() - cutoff)
        service._after(fx)
        return gone

    return asyncio.run_coroutine_threadsafe(check(), loop).result(30)


class GyozaMachine(RuleBasedStateMachine):
    server: GyozaTestServer  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.tag = f"ex{next(_examples)}"
        self.http = httpx.Client(base_url=self.server.url, timeout=30)
        self.runs: dict[str, MRun] = {}
        self.workers: dict[str, MWorker] = {}
        self.touched: set[str] = set()
        self.reopened: set[str] = set()
        self.seq = itertools.count()

    def teardown(self) -> None:
        self.touched = set(self.runs)
        self.check_touched_runs()
        self.http.close()

    # -- helpers -------------------------------------------------------------------

    def call(self, method: str, path: str, **kw) -> httpx.Response:
        r = self.http.request(method, path, **kw)
        assert r.status_code < 500, r.text
        return r

    def expect(self, r: httpx.Response, status: int, code: str | None = None) -> dict:
        assert r.status_code == status, (r.status_code, r.text, status)
        body = r.json()
        if code is not None:
            assert body["error"] == code, body
        return body

    def pick(self, items: list, i: int):
        return items[i % len(items)]

    def pick_run(self, i: int, *states: str) -> MRun:
        """Mostly a run in one of ``states`` (the interesting case), sometimes any run."""
        fitting = self.runs_in(*states)
        return self.pick(fitting if fitting and i % 5 else list(self.runs.values()), i // 5)

    def runs_in(self, *states: str) -> list[MRun]:
        return [r for r in self.runs.values() if r.state in states]

    def free(self, worker: str) -> int:
        held = sum(r.cpu for r in self.runs.values() if r.reserved_on == worker)
        lingering = sum(r.cpu for r in self.runs.values() if r.lingering and r.lingering[0] == worker)
        return CPU_MILLI - held - lingering

    def requeue_or_fail(self, run: MRun, reason: str) -> None:
        """The retry rule (SPEC §1 RetryPolicy), for the model."""
        run.worker = None
        if reason in run.retry_on and run.attempt < run.max_attempts:
            run.state, run.attempt, run.next_seq = "PENDING", run.attempt + 1, 0
        else:
            run.state = "FAILED"

    def touch(self, run: MRun) -> None:
        self.touched.add(run.id)

    # -- rules -----------------------------------------------------------------------

    @precondition(lambda self: len(self.runs) < 12)
    @rule(spec=RUN_SPEC)
    def create(self, spec):
        if len(self.runs) >= 12:
            return
        cpu, priority, max_attempts, retry_on = spec
        body = {
            "image": "busybox",
            "priority": priority,
            "constraints": {"cpu_cores": cpu / 1000, "ram_mb": 0, "tags": [self.tag]},
            "retry_policy": {"max_attempts": max_attempts, "retry_on": sorted(retry_on), "backoff_s": 0},
        }
        run = self.expect(self.call("POST", "/runs", json=body), 201)
        assert run["state"] == "PENDING" and run["attempt"] == 1
        m = MRun(run["id"], next(self.seq), cpu, priority, max_attempts, sorted(retry_on))
        self.runs[m.id] = m
        self.touch(m)

    @initialize()
    def two_workers(self):
        self.new_worker()
        self.new_worker()

    @precondition(lambda self: len(self.workers) < 3)
    @rule()
    def new_worker(self):
        w = MWorker(f"{self.tag}-w{len(self.workers)}")
        self.workers[w.id] = w
        self.heartbeat_worker(w)

    def heartbeat_worker(self, w: MWorker, report: dict[str, int] | None = None) -> dict:
        report = w.containers if report is None else report
        body = {
            "worker_id": w.id,
            "resources": {"cpu_cores": CPU_MILLI / 1000, "ram_mb": 1024, "gpus": []},
            "tags": [self.tag],
            "running_ops": [{"run_id": rid, "attempt": a} for rid, a in report.items()],
        }
        got = self.expect(self.call("POST", "/workers/heartbeat", json=body), 200)
        w.online, w.contact = True, time.time()
        time.sleep(0.01)  # keeps contacts of different workers apart (see expire)
        # A reported run that the server ended or moved on is listed in `cancel`.
        stale = {
            rid for rid, a in report.items()
            if self.runs[rid].state in TERMINAL or self.runs[rid].attempt != a
            or self.runs[rid].worker != w.id
        }
        assert stale <= set(got["cancel"]), (stale, got["cancel"])
        # A held terminal run its worker no longer reports frees its reservation.
        for r in self.runs.values():
            if r.reserved_on == w.id and r.state in TERMINAL and r.id not in report:
                r.reserved_on = None
            if r.lingering and r.lingering[0] == w.id and report.get(r.id) != r.lingering[1]:
                r.lingering = None
        return got

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 99), stop_stale=st.booleans())
    def heartbeat(self, i, stop_stale):
        """A heartbeat; with stop_stale the worker first stops the containers it was told to."""
        w = self.pick(list(self.workers.values()), i)
        got = self.heartbeat_worker(w)
        if stop_stale:
            for rid in got["cancel"]:
                w.containers.pop(rid, None)
            self.heartbeat_worker(w)

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 99), most=st.sampled_from([None, 1, 2]), new=st.lists(RUN_SPEC, max_size=2))
    def claim(self, i, most, new):
        """A claim, after creating up to two runs (so that work flows)."""
        for spec in new:
            self.create(spec)
        w = self.pick(list(self.workers.values()), i)
        params = {} if most is None else {"max": most}
        got = self.expect(self.call("POST", f"/workers/{w.id}/claim", params=params), 200)
        w.online, w.contact = True, time.time()
        time.sleep(0.01)
        # The reference scheduler: priority, then age; every run that fits.
        expected, free = [], self.free(w.id)
        for r in sorted(self.runs_in("PENDING"), key=lambda r: (-r.priority, r.seq)):
            if most is not None and len(expected) >= most:
                break
            if r.cpu <= free:
                expected.append(r.id)
                free -= r.cpu
        assert [op["run_id"] for op in got["ops"]] == expected
        for op in got["ops"]:
            r = self.runs[op["run_id"]]
            assert op["attempt"] == r.attempt
            r.state, r.worker, r.reserved_on = "ASSIGNED", w.id, w.id
            w.containers[r.id] = r.attempt
            self.touch(r)

    def worker_event(self, r: MRun, type_: str, payload: dict | None = None) -> dict:
        body = {"type": type_, "msg": "boom" if type_ == "FAILED" else "", "attempt": r.attempt,
                "seq": r.next_seq}
        if payload is not None:
            body["payload"] = payload
        r.next_seq += 1
        return self.expect(self.call("POST", f"/runs/{r.id}/events", json=body), 200)

    @precondition(lambda self: self.runs_in("ASSIGNED"))
    @rule(i=st.integers(0, 99))
    def start(self, i):
        r = self.pick(self.runs_in("ASSIGNED"), i)
        assert self.worker_event(r, "STARTED")["state"] == "RUNNING"
        r.state = "RUNNING"
        self.touch(r)

    @precondition(lambda self: self.runs_in(*ACTIVE))
    @rule(i=st.integers(0, 99), type_=st.sampled_from(["LOG", "PROGRESS"]))
    def progress(self, i, type_):
        r = self.pick(self.runs_in(*ACTIVE), i)
        got = self.worker_event(r, type_) if type_ == "LOG" else None
        if type_ == "PROGRESS":
            body = {"type": "PROGRESS", "msg": 50, "attempt": r.attempt}
            got = self.expect(self.call("POST", f"/runs/{r.id}/events", json=body), 200)
        assert got["state"] == r.state
        self.touch(r)

    @precondition(lambda self: self.runs_in(*ACTIVE))
    @rule(i=st.integers(0, 99))
    def worker_completes(self, i):
        r = self.pick(self.runs_in(*ACTIVE), i)
        got = self.worker_event(r, "COMPLETED", {"outputs": {"ok": 1}})
        assert got["state"] == "COMPLETED" and got["outputs"] == {"ok": 1}
        self.workers[r.worker].containers.pop(r.id, None)
        r.state, r.reserved_on, r.worker = "COMPLETED", None, None
        self.touch(r)

    @precondition(lambda self: self.runs_in(*ACTIVE))
    @rule(i=st.integers(0, 99), reason=st.sampled_from(["FAILED", "TIMEOUT"]))
    def worker_fails(self, i, reason):
        r = self.pick(self.runs_in(*ACTIVE), i)
        self.workers[r.worker].containers.pop(r.id, None)
        got = self.worker_event(r, "FAILED", {"reason": reason, "exit_code": 1})
        r.reserved_on = None
        self.requeue_or_fail(r, reason)
        assert (got["state"], got["attempt"]) == (r.state, r.attempt)
        self.touch(r)

    @precondition(lambda self: self.runs_in("PENDING", *ACTIVE))
    @rule(i=st.integers(0, 99), how=st.sampled_from(["patch", "event"]))
    def cancel(self, i, how):
        r = self.pick_run(i, "PENDING", *ACTIVE)
        if how == "patch":
            resp = self.call("PATCH", f"/runs/{r.id}", json={"state": "CANCELLED"})
        else:
            resp = self.call("POST", f"/runs/{r.id}/events", json={"type": "CANCELLED"})
        if r.state in TERMINAL:
            self.expect(resp, 400, "locked")
            return
        assert self.expect(resp, 200)["state"] == "CANCELLED"
        r.state, r.worker = "CANCELLED", None  # reservation kept until unreported
        self.touch(r)

    @precondition(lambda self: self.runs_in(*ACTIVE))
    @rule(i=st.integers(0, 99), state=st.sampled_from(["COMPLETED", "FAILED"]))
    def patch_state(self, i, state):
        r = self.pick_run(i, *ACTIVE)
        resp = self.call("PATCH", f"/runs/{r.id}", json={"state": state})
        if r.state in TERMINAL:
            self.expect(resp, 400, "locked")
        elif r.state == "PENDING":
            self.expect(resp, 400, "invalid")
        else:
            assert self.expect(resp, 200)["state"] == state
            r.state, r.worker = state, None  # final; reservation kept until unreported
            self.touch(r)

    @precondition(lambda self: self.runs_in("PENDING", *ACTIVE))
    @rule(i=st.integers(0, 99), priority=st.integers(0, 3))
    def patch_priority(self, i, priority):
        r = self.pick_run(i, "PENDING", *ACTIVE)
        resp = self.call("PATCH", f"/runs/{r.id}", json={"priority": priority})
        if r.state in TERMINAL:
            self.expect(resp, 400, "locked")
        else:
            assert self.expect(resp, 200)["priority"] == priority
            r.priority = priority
            self.touch(r)

    @precondition(lambda self: self.runs_in("FAILED", "CANCELLED"))
    @rule(i=st.integers(0, 99))
    def retry(self, i):
        r = self.pick_run(i, "FAILED", "CANCELLED")
        resp = self.call("POST", f"/runs/{r.id}/retry")
        if r.state not in ("FAILED", "CANCELLED") or r.attempt >= r.max_attempts:
            self.expect(resp, 400, "invalid")
            return
        got = self.expect(resp, 200)
        if r.reserved_on is not None:  # its old container may still be stopping
            r.lingering = (r.reserved_on, r.attempt)
        r.state, r.attempt, r.worker, r.reserved_on, r.next_seq = "PENDING", r.attempt + 1, None, None, 0
        assert (got["state"], got["attempt"]) == ("PENDING", r.attempt)
        r.snapshot = None
        self.reopened.add(r.id)
        self.touch(r)

    @precondition(lambda self: self.runs_in(*TERMINAL))
    @rule(i=st.integers(0, 99), what=st.sampled_from(["LOG", "STARTED", "PATCH", "PRIORITY"]))
    def terminal_run_is_locked(self, i, what):
        r = self.pick(self.runs_in(*TERMINAL), i)
        if what in ("LOG", "STARTED"):
            resp = self.call("POST", f"/runs/{r.id}/events", json={"type": what, "attempt": r.attempt})
        else:
            body = {"state": "RUNNING"} if what == "PATCH" else {"priority": 7}
            resp = self.call("PATCH", f"/runs/{r.id}", json=body)
        self.expect(resp, 400, "locked")

    @precondition(lambda self: any(r.attempt > 1 for r in self.runs.values()))
    @rule(i=st.integers(0, 99))
    def stale_event(self, i):
        """A late worker of an earlier attempt is fenced off with 409, whatever the state."""
        r = self.pick([r for r in self.runs.values() if r.attempt > 1], i)
        body = {"type": "COMPLETED", "attempt": r.attempt - 1, "seq": 999}
        self.expect(self.call("POST", f"/runs/{r.id}/events", json=body), 409, "stale_attempt")

    @precondition(lambda self: self.runs_in(*ACTIVE))
    @rule(k=st.integers(1, 3))
    def worker_timeout(self, k):
        """The k workers silent longest go OFFLINE; their runs are LOST."""
        online = sorted((w for w in self.workers.values() if w.online), key=lambda w: w.contact)
        k = min(k, len(online))
        cutoff = online[k - 1].contact + 0.002  # after its contact, before the next one's
        gone = set(expire_workers_before(self.server, cutoff))
        ours = {w.id for w in self.workers.values() if w.id in gone}
        assert ours == {w.id for w in online[:k]}
        for wid in ours:
            self.workers[wid].online = False
            for r in self.runs.values():
                if r.lingering and r.lingering[0] == wid:
                    r.lingering = None
                if r.reserved_on == wid:
                    r.reserved_on = None
                    if r.state in ACTIVE:
                        self.requeue_or_fail(r, "LOST")
                        self.touch(r)

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def runs_match_the_model(self):
        listed = self.expect(self.call("GET", "/runs", params={"limit": 1000}), 200)["runs"]
        server = {r["id"]: r for r in listed if r["id"] in self.runs}
        assert set(server) == set(self.runs)
        for rid, m in self.runs.items():
            s = server[rid]
            assert (s["state"], s["attempt"]) == (m.state, m.attempt), (rid, s["state"], m)
            if m.state in ACTIVE:
                assert s["worker_id"] == m.worker
            # Terminal runs never change (retry is the one way out).
            if m.state in TERMINAL and rid not in self.reopened:
                frozen = {k: s[k] for k in ("state", "attempt", "outputs", "finished_at", "updated_at", "priority")}
                if m.snapshot is None:
                    m.snapshot = frozen
                assert frozen == m.snapshot, rid
        self.reopened.clear()
        self.check_touched_runs()

    @invariant()
    def workers_hold_what_the_model_says(self):
        workers = self.expect(self.call("GET", "/workers"), 200)
        seen: dict[str, str] = {}
        for w in workers:
            for op in w["running_ops"]:
                assert op["run_id"] not in seen, f"{op['run_id']} on two workers"
                seen[op["run_id"]] = w["worker_id"]
            if w["worker_id"] not in self.workers:
                continue
            reserved = CPU_MILLI - self.free(w["worker_id"])
            assert 0 <= reserved <= CPU_MILLI, "the model over-committed a worker"
            assert round(w["free"]["cpu_cores"] * 1000) == CPU_MILLI - reserved, w["worker_id"]
            assert w["status"] == ("ONLINE" if self.workers[w["worker_id"]].online else "OFFLINE")
        for m in self.runs.values():
            assert seen.get(m.id) == (m.worker if m.state in ACTIVE else None), m.id

    def check_touched_runs(self):
        for rid in sorted(self.touched):
            m = self.runs[rid]
            run = self.expect(self.call("GET", f"/runs/{rid}"), 200)
            assert len(run["attempts"]) == run["attempt"], rid
            assert [a["number"] for a in run["attempts"]] == list(range(1, run["attempt"] + 1))
            ids = [e["id"] for e in run["events"]]
            assert ids == list(range(1, len(ids) + 1)), rid
            assert ids[: len(m.events)] == m.events, "events are append-only"
            m.events = ids
            self.check_requeues(m, run)
        self.touched.clear()

    def check_requeues(self, m: MRun, run: dict) -> None:
        """After each LOST/FAILED event: RETRYING then QUEUED iff the policy allows a retry."""
        events = run["events"]
        for n, e in enumerate(events):
            if e["type"] not in ("LOST", "FAILED") or e["msg"] == PATCH_FAILED:
                continue
            reason = "LOST" if e["type"] == "LOST" else (e["payload"] or {}).get("reason", "FAILED")
            allowed = reason in m.retry_on and e["attempt"] < m.max_attempts
            following = [x["type"] for x in events[n + 1 : n + 3]]
            if allowed:
                assert following == ["RETRYING", "QUEUED"], (m.id, e, following)
                assert e["state"] == "PENDING"
                attempt = run["attempts"][e["attempt"] - 1]
                assert attempt["reason"] == reason and attempt["state"] == "FAILED"
                assert run["attempts"][e["attempt"]]["number"] == e["attempt"] + 1
            else:  # final (a later RETRYING can only be a manual retry)
                assert e["state"] == "FAILED", (m.id, e)
                if following[:1] == ["RETRYING"]:
                    assert "manual retry" in events[n + 1]["msg"], (m.id, events[n + 1])


def test_random_sequences_keep_every_invariant(live):
    GyozaMachine.server = live
    GyozaMachine.TestCase.settings = settings(
        max_examples=30,
        stateful_step_count=50,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        # No shrinking: against a live server it can take minutes; the failing
        # sequence (at most 50 steps) is printed as found.
        phases=[Phase.explicit, Phase.generate],
    )
    GyozaMachine.TestCase().runTest()
