"""Placement (SPEC §4): order, backfill, GPU choice, tags, `max`, and why a run waits."""

from __future__ import annotations

import httpx
import pytest

from tests.fake_worker import FakeWorker, gpu, resources

IMAGE = "busybox:latest"


def run(client, priority: int = 5, **constraints) -> str:
    cons = {"cpu_cores": 1, "ram_mb": 256, **constraints}
    return client.create_run(IMAGE, {}, priority=priority, constraints=cons)["id"]


def claim_one_at_a_time(w: FakeWorker, n: int) -> list[str]:
    """Claim on a one-run worker, completing each run before the next claim."""
    order = []
    for _ in range(n):
        (rid,) = w.claim_ids()
        w.complete(rid)
        order.append(rid)
    return order


# -- order ----------------------------------------------------------------------------


def test_claim_hands_out_higher_priority_runs_first(client):
    w = FakeWorker(client, "w1", resources(cpu=1))
    w.heartbeat()
    low = run(client, priority=1)
    high = run(client, priority=90)
    mid = run(client, priority=50)
    assert claim_one_at_a_time(w, 3) == [high, mid, low]


def test_equal_priority_runs_are_handed_out_oldest_first(client):
    w = FakeWorker(client, "w1", resources(cpu=1))
    w.heartbeat()
    ids = [run(client) for _ in range(4)]
    assert claim_one_at_a_time(w, 4) == ids


def test_one_claim_hands_out_every_fitting_run_in_priority_then_age_order(client):
    w = FakeWorker(client, "w1", resources(cpu=8))
    w.heartbeat()
    a = run(client, priority=5)
    b = run(client, priority=7)
    c = run(client, priority=5)
    assert w.claim_ids() == [b, a, c]


def test_raising_priority_moves_a_pending_run_ahead(client):
    w = FakeWorker(client, "w1", resources(cpu=1))
    w.heartbeat()
    first = run(client)
    second = run(client)
    client.update_run(second, priority=80)
    assert w.claim_ids() == [second]
    assert first != second


def test_a_run_that_does_not_fit_does_not_block_smaller_runs_behind_it(client):
    w = FakeWorker(client, "w1", resources(cpu=2, ram_mb=4096, gpus=[gpu(0, 24000)]))
    w.heartbeat()
    too_much_cpu = run(client, priority=99, cpu_cores=3)
    too_much_ram = run(client, priority=98, ram_mb=8000)
    too_many_gpus = run(client, priority=97, gpus=2)
    small = run(client, priority=1, cpu_cores=0.5)
    assert w.claim_ids() == [small]
    states = {rid: client.get_run(rid)["state"] for rid in (too_much_cpu, too_much_ram, too_many_gpus)}
    assert set(states.values()) == {"PENDING"}


def test_a_busy_worker_still_takes_a_run_that_fits_its_remaining_capacity(client):
    w = FakeWorker(client, "w1", resources(cpu=4))
    w.heartbeat()
    big = run(client, cpu_cores=3)
    assert w.claim_ids() == [big]
    waiting_big = run(client, priority=90, cpu_cores=2)
    small = run(client, priority=1, cpu_cores=1)
    assert w.claim_ids() == [small]
    assert client.get_run(waiting_big)["state"] == "PENDING"


def test_max_caps_the_number_of_runs_handed_out(client):
    w = FakeWorker(client, "w1", resources(cpu=16))
    w.heartbeat()
    ids = [run(client) for _ in range(5)]
    assert w.claim_ids(max=2) == ids[:2]
    assert w.claim_ids(max=0) == []
    assert w.claim_ids() == ids[2:]


def test_claim_before_the_first_heartbeat_is_404(client):
    run(client)
    with pytest.raises(httpx.HTTPStatusError) as err:
        client.claim("never-seen")
    assert err.value.response.status_code == 404


def test_claimed_run_is_assigned_to_the_worker_with_an_attempt_record(client):
    w = FakeWorker(client, "w1", resources(gpus=[gpu(0, 8000)]))
    w.heartbeat()
    rid = run(client, gpus=1)
    (op,) = w.claim()["ops"]
    assert (op["run_id"], op["attempt"], op["gpu_ids"]) == (rid, 1, [0])
    got = client.get_run(rid)
    assert (got["state"], got["worker_id"], got["gpu_ids"]) == ("ASSIGNED", "w1", [0])
    (att,) = got["attempts"]
    assert (att["state"], att["worker_id"], att["gpu_ids"]) == ("ASSIGNED", "w1", [0])
    assert att["assigned_at"] is not None
    assert [e["type"] for e in got["events"]] == ["QUEUED", "ASSIGNED"]


# -- GPUs -------------------------------------------------------------------------------


def test_gpu_ids_are_distinct_within_a_worker(client):
    w = FakeWorker(client, "w1", resources(cpu=16, gpus=[gpu(i, 16000) for i in range(4)]))
    w.heartbeat()
    ids = [run(client, gpus=g) for g in (1, 2, 1, 1)]
    ops = w.claim()["ops"]
    assert [op["run_id"] for op in ops] == ids[:3]
    handed = [g for op in ops for g in op["gpu_ids"]]
    assert sorted(handed) == [0, 1, 2, 3]
    assert client.get_run(ids[3])["state"] == "PENDING"


def test_gpu_choice_takes_the_least_vram_that_fits_then_the_lowest_ids(client):
    gpus = [gpu(0, 80000), gpu(1, 24000), gpu(2, 48000), gpu(3, 24000)]
    w = FakeWorker(client, "w1", resources(cpu=16, gpus=gpus))
    w.heartbeat()
    small = run(client, priority=9, gpus=1, vram_mb=20000)
    medium = run(client, priority=8, gpus=1, vram_mb=40000)
    pair = run(client, priority=7, gpus=2)
    got = {op["run_id"]: op["gpu_ids"] for op in w.claim()["ops"]}
    assert got == {small: [1], medium: [2], pair: [0, 3]}


def test_gpu_choice_leaves_the_large_gpu_free_for_a_large_run(client):
    w = FakeWorker(client, "w1", resources(cpu=16, gpus=[gpu(0, 80000), gpu(1, 16000)]))
    w.heartbeat()
    any_gpu = run(client, priority=9, gpus=1)
    large = run(client, priority=1, gpus=1, vram_mb=70000)
    got = {op["run_id"]: op["gpu_ids"] for op in w.claim()["ops"]}
    assert got == {any_gpu: [1], large: [0]}


def test_gpu_choice_is_deterministic_for_equal_gpus(client):
    shape = resources(cpu=16, gpus=[gpu(i, 24000) for i in (3, 1, 2, 0)])
    chosen = []
    for wid in ("w1", "w2"):
        w = FakeWorker(client, wid, shape)
        w.heartbeat()
        run(client, gpus=2)
        chosen.append(w.claim()["ops"][0]["gpu_ids"])
    assert chosen == [[0, 1], [0, 1]]


def test_gpu_ids_are_freed_when_the_run_completes(client):
    w = FakeWorker(client, "w1", resources(cpu=16, gpus=[gpu(0, 24000), gpu(1, 24000)]))
    w.heartbeat()
    first = run(client, gpus=2)
    assert w.claim_ids() == [first]
    second = run(client, gpus=1)
    assert w.claim_ids() == []
    assert w.status()["free"]["gpu_ids"] == []
    w.start(first)
    w.complete(first)
    assert w.status()["free"]["gpu_ids"] == [0, 1]
    (op,) = w.claim()["ops"]
    assert (op["run_id"], op["gpu_ids"]) == (second, [0])


def test_gpu_ids_are_freed_when_the_run_fails(client):
    w = FakeWorker(client, "w1", resources(cpu=16, gpus=[gpu(0, 24000)]))
    w.heartbeat()
    first = run(client, gpus=1)
    assert w.claim_ids() == [first]
    second = run(client, gpus=1)
    w.fail(first)
    assert w.claim_ids() == [second]


def test_two_workers_may_use_the_same_gpu_ids(client):
    shape = resources(gpus=[gpu(0, 24000)])
    w1, w2 = FakeWorker(client, "w1", shape), FakeWorker(client, "w2", shape)
    w1.heartbeat()
    w2.heartbeat()
    a, b = run(client, gpus=1), run(client, gpus=1)
    assert [op["gpu_ids"] for op in w1.claim()["ops"]] == [[0]]
    assert [op["gpu_ids"] for op in w2.claim()["ops"]] == [[0]]
    assert {client.get_run(a)["worker_id"], client.get_run(b)["worker_id"]} == {"w1", "w2"}


# -- tags ---------------------------------------------------------------------------------


def test_a_run_with_tags_goes_only_to_a_worker_carrying_all_of_them(client):
    plain = FakeWorker(client, "plain", resources(), tags=["linux"])
    tagged = FakeWorker(client, "tagged", resources(), tags=["linux", "fast", "ssd"])
    plain.heartbeat()
    tagged.heartbeat()
    rid = run(client, tags=["fast", "ssd"])
    assert plain.claim_ids() == []
    assert tagged.claim_ids() == [rid]


def test_gpu_tags_select_only_gpus_carrying_all_of_them(client):
    gpus = [gpu(0, 24000, "ampere"), gpu(1, 24000, "hopper", "nvlink"), gpu(2, 24000, "hopper")]
    w = FakeWorker(client, "w1", resources(cpu=16, gpus=gpus))
    w.heartbeat()
    rid = run(client, gpus=1, gpu_tags=["hopper", "nvlink"])
    other = run(client, gpus=2, gpu_tags=["hopper"])
    got = {op["run_id"]: op["gpu_ids"] for op in w.claim()["ops"]}
    assert got == {rid: [1]}
    assert client.get_run(other)["state"] == "PENDING"


# -- why a run waits ----------------------------------------------------------------------


def scheduling(client, rid: str) -> str | None:
    return client.get_run(rid)["scheduling"]


def test_scheduling_says_no_worker_online(client):
    rid = run(client)
    assert scheduling(client, rid) == "no worker online"


def test_scheduling_names_a_tag_no_online_worker_has(client):
    FakeWorker(client, "w1", resources(), tags=["x86"]).heartbeat()
    rid = run(client, tags=["a100"])
    assert scheduling(client, rid) == "needs tag 'a100'; no online worker has it"


def test_scheduling_names_tags_no_single_worker_has_together(client):
    FakeWorker(client, "w1", resources(), tags=["a"]).heartbeat()
    FakeWorker(client, "w2", resources(), tags=["b"]).heartbeat()
    rid = run(client, tags=["a", "b"])
    sentence = scheduling(client, rid)
    assert sentence is not None
    assert "'a'" in sentence and "'b'" in sentence and "GPU" not in sentence


def test_scheduling_names_too_few_gpus(client):
    FakeWorker(client, "w1", resources(gpus=[gpu(0, 80000)])).heartbeat()
    rid = run(client, gpus=2)
    assert scheduling(client, rid) == "needs 2 GPUs; largest worker w1 has 1 GPU"


def test_scheduling_names_too_little_vram(client):
    FakeWorker(client, "w1", resources(gpus=[gpu(0, 24000), gpu(1, 48000)])).heartbeat()
    FakeWorker(client, "w2", resources(gpus=[gpu(0, 24000)])).heartbeat()
    rid = run(client, gpus=2, vram_mb=40000)
    sentence = scheduling(client, rid)
    assert sentence is not None
    assert sentence.startswith("needs 2 GPUs with >= 40000 MB VRAM; largest worker w1 has 1 GPU")


def test_scheduling_names_too_few_cpu_cores(client):
    FakeWorker(client, "small", resources(cpu=2)).heartbeat()
    FakeWorker(client, "big", resources(cpu=8)).heartbeat()
    rid = run(client, cpu_cores=12)
    assert scheduling(client, rid) == "needs 12 CPU cores; largest worker big has 8"


def test_scheduling_names_too_little_ram(client):
    FakeWorker(client, "w1", resources(ram_mb=4096)).heartbeat()
    rid = run(client, ram_mb=16384)
    assert scheduling(client, rid) == "needs 16384 MB RAM; largest worker w1 has 4096"


def test_scheduling_names_a_combination_no_single_worker_has(client):
    FakeWorker(client, "cpu-box", resources(cpu=16, ram_mb=1024)).heartbeat()
    FakeWorker(client, "ram-box", resources(cpu=1, ram_mb=65536)).heartbeat()
    rid = run(client, cpu_cores=8, ram_mb=32768)
    sentence = scheduling(client, rid)
    assert sentence is not None
    assert "CPU" in sentence and "RAM" in sentence and "GPU" not in sentence


def test_scheduling_is_null_for_a_run_that_waits_only_because_workers_are_busy(client):
    w = FakeWorker(client, "w1", resources(cpu=1))
    w.heartbeat()
    first = run(client)
    assert w.claim_ids() == [first]
    rid = run(client)
    assert scheduling(client, rid) is None


def test_scheduling_is_cleared_when_a_suitable_worker_heartbeats(client):
    rid = run(client, gpus=1, vram_mb=40000)
    assert scheduling(client, rid) == "no worker online"
    FakeWorker(client, "small", resources(gpus=[gpu(0, 24000)])).heartbeat()
    assert scheduling(client, rid).startswith("needs 1 GPU with >= 40000 MB VRAM")
    FakeWorker(client, "big", resources(gpus=[gpu(0, 80000)])).heartbeat()
    assert scheduling(client, rid) is None


def test_scheduling_is_cleared_when_a_worker_grows(client):
    w = FakeWorker(client, "w1", resources(ram_mb=1024))
    w.heartbeat()
    rid = run(client, ram_mb=2048)
    assert scheduling(client, rid) is not None
    w.resources = resources(ram_mb=4096)
    w.heartbeat()
    assert scheduling(client, rid) is None
    assert w.claim_ids() == [rid]


def test_scheduling_is_null_once_the_run_is_claimed(client):
    w = FakeWorker(client, "w1", resources())
    rid = run(client)
    assert scheduling(client, rid) == "no worker online"
    w.heartbeat()
    assert w.claim_ids() == [rid]
    assert scheduling(client, rid) is None


# -- worker list ----------------------------------------------------------------------------


def test_worker_list_shows_status_free_resources_and_running_ops(client):
    w = FakeWorker(client, "w1", resources(cpu=4, ram_mb=8192, gpus=[gpu(0, 24000), gpu(1, 24000)]),
                   tags=["fast"])
    w.heartbeat()
    rid = run(client, cpu_cores=1.5, ram_mb=1000, gpus=1)
    w.claim()
    (listed,) = client.list_workers()
    assert listed["worker_id"] == "w1"
    assert listed["status"] == "ONLINE"
    assert listed["tags"] == ["fast"]
    assert listed["free"] == {"cpu_cores": 2.5, "ram_mb": 7192, "gpu_ids": [1]}
    assert [(op["run_id"], op["attempt"], op["gpu_ids"]) for op in listed["running_ops"]] == [
        (rid, 1, [0])
    ]
    assert listed["cancel"] == []
    assert listed["first_seen_at"] and listed["last_heartbeat_at"]


def test_scheduling_names_every_tag_no_online_worker_has(client):
    FakeWorker(client, "w1", resources(), tags=["x86"]).heartbeat()
    rid = run(client, tags=["a100", "nvme", "x86"])
    assert scheduling(client, rid) == "needs tags 'a100', 'nvme'; no online worker has them"
