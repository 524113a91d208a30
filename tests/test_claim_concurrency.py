"""Claims under waiting and under contention (SPEC §4).

Long-poll claims wake on the changes that let them hand out work (a new run,
freed capacity, an expired backoff) or on a cancel for that worker; many
concurrent claimers never share a run and never over-commit a worker.
Wake-up bounds are generous (1.5 s): these machines are noisy.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest

from tests.fake_worker import FakeWorker, gpu, resources

IMAGE = "busybox:latest"
WAKE = 1.5  # "within a fraction of a second", with room for a loaded machine


def run(client, priority: int = 5, retry: dict | None = None, **constraints) -> str:
    cons = {"cpu_cores": 1, "ram_mb": 256, **constraints}
    return client.create_run(IMAGE, {}, priority=priority, constraints=cons, retry_policy=retry)["id"]


def iso_seconds(t: str) -> float:
    return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


class Waiting:
    """A long-poll claim running in a thread: when did it return, with what."""

    def __init__(self, server, worker: FakeWorker, wait: float = 10.0) -> None:
        self.answer: dict | None = None
        self.returned_at = 0.0
        self._client = server.client()
        self._worker = FakeWorker(self._client, worker.worker_id, worker.resources, worker.tags)
        self._thread = threading.Thread(target=self._claim, args=(wait,))
        self.started_at = time.monotonic()
        self._thread.start()
        time.sleep(0.3)  # let the claim reach the server and start waiting

    def _claim(self, wait: float) -> None:
        try:
            self.answer = self._worker.client.claim(self._worker.worker_id, wait=wait)
        finally:
            self.returned_at = time.monotonic()

    def result(self) -> tuple[dict, float]:
        """The answer and when it came, relative to now (call right after the trigger)."""
        trigger = time.monotonic()
        self._thread.join(timeout=30)
        self._client.close()
        assert self.answer is not None
        return self.answer, self.returned_at - trigger

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()


# -- long-poll -------------------------------------------------------------------------------


def test_a_long_poll_claim_wakes_when_a_fitting_run_is_created(server, client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    waiting = Waiting(server, w)
    assert not waiting.done
    rid = run(client)
    answer, after = waiting.result()
    assert [op["run_id"] for op in answer["ops"]] == [rid]
    assert after < WAKE


def test_a_long_poll_claim_is_not_woken_into_taking_a_run_that_does_not_fit(server, client):
    w = FakeWorker(client, "w1", resources(cpu=2))
    w.heartbeat()
    waiting = Waiting(server, w)
    too_big = run(client, priority=99, cpu_cores=4)
    time.sleep(0.3)
    assert not waiting.done
    fits = run(client, priority=1, cpu_cores=2)
    answer, after = waiting.result()
    assert [op["run_id"] for op in answer["ops"]] == [fits]
    assert after < WAKE
    assert client.get_run(too_big)["state"] == "PENDING"


def test_a_long_poll_claim_wakes_when_a_completing_run_frees_capacity(server, client):
    w = FakeWorker(client, "w1", resources(cpu=1, gpus=[gpu(0, 24000)]))
    w.heartbeat()
    first = run(client, gpus=1)
    w.claim()
    second = run(client, gpus=1)
    waiting = Waiting(server, w)
    assert not waiting.done
    w.complete(first)
    answer, after = waiting.result()
    assert [(op["run_id"], op["gpu_ids"]) for op in answer["ops"]] == [(second, [0])]
    assert after < WAKE


def test_a_long_poll_claim_wakes_when_a_heartbeat_adds_capacity(server, client):
    w = FakeWorker(client, "w1", resources(ram_mb=1024))
    w.heartbeat()
    rid = run(client, ram_mb=2048)
    waiting = Waiting(server, w)
    assert not waiting.done
    w.resources = resources(ram_mb=4096)
    w.heartbeat()
    answer, after = waiting.result()
    assert [op["run_id"] for op in answer["ops"]] == [rid]
    assert after < WAKE


def test_a_long_poll_claim_wakes_when_a_backoff_expires(server, client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    rid = run(client, retry={"retry_on": ["FAILED"], "backoff_s": 1.0})
    w.claim()
    w.fail(rid)
    failed = time.monotonic()
    answer = w.claim(wait=10)
    returned = time.monotonic() - failed
    assert [(op["run_id"], op["attempt"]) for op in answer["ops"]] == [(rid, 2)]
    assert returned < 1.0 + WAKE
    events = {e["type"]: e["t"] for e in client.get_run(rid)["events"]}  # the last of each type
    assert iso_seconds(events["ASSIGNED"]) - iso_seconds(events["FAILED"]) >= 1.0 - 0.01


def test_a_long_poll_claim_returns_at_once_with_a_fresh_cancel_for_that_worker(server, client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    rid = run(client)
    w.claim()
    waiting = Waiting(server, w)
    assert not waiting.done
    client.cancel_run(rid)
    answer, after = waiting.result()
    assert answer == {"ops": [], "cancel": [rid]}
    assert after < WAKE


def test_a_long_poll_claim_keeps_waiting_through_an_already_announced_cancel(server, client):
    w = FakeWorker(client, "w1")
    w.heartbeat()
    rid = run(client)
    w.claim()
    client.cancel_run(rid)
    assert w.claim()["cancel"] == [rid]
    answer = w.claim(wait=0.8)
    assert answer == {"ops": [], "cancel": [rid]}


def test_a_long_poll_claim_ignores_another_workers_cancel(server, client):
    w1, w2 = FakeWorker(client, "w1"), FakeWorker(client, "w2", resources(cpu=0.5))
    w1.heartbeat()
    w2.heartbeat()
    rid = run(client)
    w1.claim()
    waiting = Waiting(server, w2, wait=1.5)
    client.cancel_run(rid)
    time.sleep(0.3)
    assert not waiting.done
    answer, _ = waiting.result()
    assert answer == {"ops": [], "cancel": []}


def test_a_long_poll_claim_returns_empty_when_nothing_fits_before_the_wait_ends(client):
    w = FakeWorker(client, "w1", resources(cpu=1))
    w.heartbeat()
    run(client, cpu_cores=2)
    t0 = time.monotonic()
    assert w.claim(wait=0.6) == {"ops": [], "cancel": []}
    assert time.monotonic() - t0 >= 0.55


def test_a_run_created_after_a_claimer_hung_up_goes_to_a_live_worker(server, client):
    gone, live = FakeWorker(client, "gone"), FakeWorker(client, "live")
    gone.heartbeat()
    live.heartbeat()
    with httpx.Client(base_url=server.url, timeout=0.3) as impatient:
        with pytest.raises(httpx.TimeoutException):
            impatient.post("/workers/gone/claim", params={"wait": 10})
    time.sleep(0.2)
    rid = run(client)
    assert live.claim_ids() == [rid]
    assert client.get_run(rid)["worker_id"] == "live"


def test_one_run_and_many_waiting_claimers_hand_it_out_once(server, client):
    workers = [FakeWorker(client, f"w{i}") for i in range(8)]
    for w in workers:
        w.heartbeat()
    clients = [server.client() for _ in workers]
    try:
        with ThreadPoolExecutor(len(workers)) as pool:
            futures = [
                pool.submit(c.claim, w.worker_id, wait=1.0)
                for c, w in zip(clients, workers, strict=True)
            ]
            time.sleep(0.3)
            rid = run(client)
            answers = [f.result() for f in futures]
    finally:
        for c in clients:
            c.close()
    assert [op["run_id"] for a in answers for op in a["ops"]] == [rid]


# -- 16 claimers, 1000 runs ---------------------------------------------------------------------

WORKER_SHAPES = [
    # (cpu, ram_mb, gpus, tags)
    (2, 2048, [], []),
    (4, 4096, [], ["ssd"]),
    (8, 8192, [gpu(0, 24000), gpu(1, 24000)], []),
    (4, 8192, [gpu(0, 48000, "nvlink"), gpu(1, 48000, "nvlink"), gpu(2, 16000)], ["ssd"]),
    (2, 4096, [gpu(0, 80000)], []),
    (6, 6144, [gpu(0, 16000), gpu(1, 24000), gpu(2, 48000), gpu(3, 80000, "nvlink")], ["ssd"]),
    (1, 1024, [], []),
    (3, 3072, [gpu(0, 24000, "nvlink")], []),
]

RUN_SHAPES = [
    {"cpu_cores": 0.5, "ram_mb": 256},
    {"cpu_cores": 1, "ram_mb": 512},
    {"cpu_cores": 2, "ram_mb": 2048},
    {"cpu_cores": 1, "ram_mb": 1024, "tags": ["ssd"]},
    {"cpu_cores": 0.5, "ram_mb": 256, "gpus": 1},
    {"cpu_cores": 1, "ram_mb": 512, "gpus": 1, "vram_mb": 40000},
    {"cpu_cores": 1, "ram_mb": 1024, "gpus": 2, "vram_mb": 20000},
    {"cpu_cores": 0.5, "ram_mb": 512, "gpus": 1, "gpu_tags": ["nvlink"]},
    {"cpu_cores": 0.25, "ram_mb": 128, "gpus": 2, "gpu_tags": ["nvlink"], "vram_mb": 40000},
    {"cpu_cores": 3, "ram_mb": 3000},
]


def _check_fits(worker: FakeWorker, shape: tuple) -> list[str]:
    """Problems with what ``worker`` holds against its resources (none is right)."""
    cpu, ram, gpus, tags = shape
    problems = []
    held = list(worker.held.values())
    cpu_milli = sum(round(op["constraints"]["cpu_cores"] * 1000) for op in held)
    ram_mb = sum(op["constraints"]["ram_mb"] for op in held)
    if cpu_milli > cpu * 1000 or ram_mb > ram:
        problems.append(f"{worker.worker_id} over-committed: {cpu_milli}m CPU, {ram_mb} MB RAM")
    by_id = {g["id"]: g for g in gpus}
    used = [g for op in held for g in op["gpu_ids"]]
    if len(used) != len(set(used)):
        problems.append(f"{worker.worker_id} gave one GPU to two runs: {sorted(used)}")
    for op in held:
        c = op["constraints"]
        if len(op["gpu_ids"]) != c.get("gpus", 0):
            problems.append(f"{op['run_id']} got {op['gpu_ids']} for gpus={c.get('gpus')}")
        for g in op["gpu_ids"]:
            if g not in by_id or by_id[g]["vram_mb"] < c["vram_mb"]:
                problems.append(f"{op['run_id']} got GPU {g} without {c['vram_mb']} MB")
            elif not set(c["gpu_tags"]) <= set(by_id[g]["tags"]):
                problems.append(f"{op['run_id']} got GPU {g} without tags {c['gpu_tags']}")
        if not set(c["tags"]) <= set(tags):
            problems.append(f"{op['run_id']} went to {worker.worker_id} without tags {c['tags']}")
    return problems


def test_sixteen_concurrent_claimers_hand_out_each_of_1000_runs_once_without_over_committing(
    server, client
):
    total = 1000
    rng = random.Random(7)
    handed: list[str] = []
    problems: list[str] = []
    completed = Counter()
    lock = threading.Lock()
    all_done = threading.Event()

    def work(index: int) -> None:
        shape = WORKER_SHAPES[index % len(WORKER_SHAPES)]
        cpu, ram, gpus, tags = shape
        local = random.Random(index)
        with server.client() as c:
            w = FakeWorker(c, f"w{index:02d}", resources(cpu, ram, gpus), tags)
            w.heartbeat()
            finish_at: dict[str, float] = {}
            last_beat = time.monotonic()
            while not all_done.is_set():
                now = time.monotonic()
                for rid in [r for r, t in finish_at.items() if t <= now]:
                    del finish_at[rid]
                    w.complete(rid)
                    with lock:
                        completed[rid] += 1
                        if len(completed) == total:
                            all_done.set()
                if now - last_beat > 0.4:
                    answer = w.heartbeat()
                    if answer["cancel"]:
                        with lock:
                            problems.append(f"{w.worker_id} told to cancel {answer['cancel']}")
                    last_beat = now
                wait = 0.2 if not finish_at else max(min(finish_at.values()) - now, 0)
                answer = w.claim(wait=round(wait, 3), max=local.choice([None, None, 1, 3]))
                new = [op["run_id"] for op in answer["ops"]]
                found = _check_fits(w, shape)
                with lock:
                    handed.extend(new)
                    problems.extend(found)
                for rid in new:
                    finish_at[rid] = time.monotonic() + local.uniform(0, 0.02)

    def create() -> str:
        shape = RUN_SHAPES[rng.randrange(len(RUN_SHAPES))]
        return run(client, priority=rng.randrange(0, 10), **shape)

    # Half the runs wait in the queue; the other half arrive while workers claim.
    created = [create() for _ in range(total // 2)]
    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    try:
        created += [create() for _ in range(total - len(created))]
        all_done.wait(timeout=120)
    finally:
        all_done.set()
        for t in threads:
            t.join(timeout=30)

    assert problems == []
    counts = Counter(handed)
    assert sorted(counts) == sorted(created)
    assert [rid for rid, n in counts.items() if n != 1] == []
    assert set(completed) == set(created) and set(completed.values()) == {1}
    page = client.list_runs(state="COMPLETED", limit=1000)
    assert len(page["runs"]) == total
    assert {r["attempt"] for r in page["runs"]} == {1}
    for w in client.list_workers():
        assert (w["status"], w["running_ops"], w["cancel"]) == ("ONLINE", [], [])
