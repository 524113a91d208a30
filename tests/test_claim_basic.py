"""Claim, first version: fit, order, GPU ids and atomicity under concurrency."""

from __future__ import annotations

import threading
from collections import Counter

from gyoza.client import GyozaClient

GPU_BOX = {
    "cpu_cores": 8,
    "ram_mb": 32000,
    "gpus": [
        {"id": 0, "vram_mb": 24000, "tags": ["rtx"]},
        {"id": 1, "vram_mb": 80000, "tags": ["a100"]},
        {"id": 2, "vram_mb": 24000, "tags": ["rtx"]},
    ],
}


def test_claim_hands_out_runs_in_priority_then_age_order(client):
    low = client.create_run("busybox", {}, priority=1)
    high = client.create_run("busybox", {}, priority=50)
    mid_old = client.create_run("busybox", {}, priority=5)
    mid_new = client.create_run("busybox", {}, priority=5)
    client.heartbeat("w1", {"cpu_cores": 16, "ram_mb": 64000})
    ops = client.claim_ops("w1")
    assert [o["run_id"] for o in ops] == [high["id"], mid_old["id"], mid_new["id"], low["id"]]


def test_claim_takes_only_what_fits_the_free_resources(client):
    for _ in range(3):
        client.create_run("busybox", {}, constraints={"cpu_cores": 1.5, "ram_mb": 1000})
    client.heartbeat("w1", {"cpu_cores": 4, "ram_mb": 8000})
    assert len(client.claim_ops("w1")) == 2
    assert client.claim_ops("w1") == []
    assert client.list_workers()[0]["free"]["cpu_cores"] == 1.0


def test_gpu_runs_get_distinct_gpus_recorded_on_run_and_attempt(client):
    runs = [client.create_run("img", {}, constraints={"gpus": 1}) for _ in range(4)]
    client.heartbeat("box", GPU_BOX)
    ops = client.claim_ops("box")
    assert len(ops) == 3
    assert sorted(g for o in ops for g in o["gpu_ids"]) == [0, 1, 2]
    first = client.get_run(runs[0]["id"])
    assert first["gpu_ids"] == first["attempts"][0]["gpu_ids"] == ops[0]["gpu_ids"]


def test_gpu_choice_prefers_the_smallest_vram_that_fits(client):
    small = client.create_run("img", {}, constraints={"gpus": 1, "vram_mb": 20000})
    client.heartbeat("box", GPU_BOX)
    (op,) = client.claim_ops("box")
    assert op["run_id"] == small["id"] and op["gpu_ids"] == [0]


def test_vram_and_gpu_tags_are_respected(client):
    big = client.create_run("img", {}, constraints={"gpus": 1, "vram_mb": 40000})
    tagged = client.create_run("img", {}, constraints={"gpus": 2, "gpu_tags": ["rtx"]})
    client.heartbeat("box", GPU_BOX)
    ops = {o["run_id"]: o["gpu_ids"] for o in client.claim_ops("box")}
    assert ops == {big["id"]: [1], tagged["id"]: [0, 2]}


def test_worker_tags_are_required(client):
    run = client.create_run("img", {}, constraints={"tags": ["linux", "ssd"]})
    client.heartbeat("plain", {"cpu_cores": 4, "ram_mb": 8000}, tags=["linux"])
    client.heartbeat("fancy", {"cpu_cores": 4, "ram_mb": 8000}, tags=["linux", "ssd"])
    assert client.claim_ops("plain") == []
    assert [o["run_id"] for o in client.claim_ops("fancy")] == [run["id"]]


def test_completed_runs_free_their_gpus(client):
    run = client.create_run("img", {}, constraints={"gpus": 3})
    client.heartbeat("box", GPU_BOX)
    client.claim_ops("box")
    assert client.list_workers()[0]["free"]["gpu_ids"] == []
    client.add_event(run["id"], "COMPLETED", "")
    assert client.list_workers()[0]["free"]["gpu_ids"] == [0, 1, 2]


def test_eight_concurrent_claimers_get_each_of_300_runs_exactly_once(server, client):
    ids = {client.create_run("img", {"i": i}, constraints={"cpu_cores": 0.1, "ram_mb": 1})["id"]
           for i in range(300)}
    got: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(n: int) -> None:
        with GyozaClient(server.url) as c:
            wid = f"w{n}"
            c.heartbeat(wid, {"cpu_cores": 3, "ram_mb": 1000})
            while True:
                ops = c.claim_ops(wid)
                if not ops and not c.list_runs(state="PENDING", limit=1)["runs"]:
                    return
                for op in ops:
                    with lock:
                        got[op["run_id"]] += 1
                    c.add_event(op["run_id"], "COMPLETED", "", attempt=op["attempt"])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(got) == ids
    assert max(got.values()) == 1
