"""Event delivery from a worker (SPEC §2, §5): in order, fenced, held across outages.

Against a real server; "unreachable" means the server is really stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from gyoza.client import AsyncGyozaClient
from gyoza.outbox import Outbox
from gyoza.testing import GyozaTestServer
from gyoza.worker import default_worker_id

RESOURCES = {"cpu_cores": 4, "ram_mb": 8192, "gpus": []}


@pytest.fixture
def gserver(tmp_path) -> Iterator[GyozaTestServer]:
    with GyozaTestServer(db=str(tmp_path / "gyoza.db"), heartbeat_interval=0.5, worker_timeout=60) as s:
        yield s


@pytest.fixture
async def api(gserver) -> AsyncIterator[AsyncGyozaClient]:
    async with gserver.async_client() as c:
        yield c


async def assigned_run(api: AsyncGyozaClient) -> dict:
    run = await api.create_run("busybox", {})
    await api.heartbeat("w1", RESOURCES)
    claimed = await api.claim("w1")
    assert [op["run_id"] for op in claimed["ops"]] == [run["id"]]
    return run


def worker_events(run: dict) -> list[dict]:
    return [e for e in run["events"] if e["type"] not in ("QUEUED", "ASSIGNED")]


async def test_events_are_delivered_in_order_with_attempt_and_seq(api):
    run = await assigned_run(api)
    outbox = Outbox(api, run["id"], 1)
    outbox.start()
    outbox.put("STARTED", "up")
    outbox.put_log("a\nb")
    outbox.put("PROGRESS", 50)
    outbox.put("COMPLETED", "", {"outputs": {"x": 1}})
    assert await outbox.wait_empty(10)
    await outbox.close()

    done = await api.get_run(run["id"])
    assert done["state"] == "COMPLETED" and done["outputs"] == {"x": 1}
    events = worker_events(done)
    assert [(e["type"], e["msg"], e["attempt"], e["seq"]) for e in events] == [
        ("STARTED", "up", 1, 1), ("LOG", "a\nb", 1, 2), ("PROGRESS", 50, 1, 3), ("COMPLETED", "", 1, 4),
    ]


async def test_events_held_while_the_server_is_down_arrive_in_order_when_it_returns(gserver, api):
    run = await assigned_run(api)
    outbox = Outbox(api, run["id"], 1, backoff_s=0.05, max_backoff_s=0.5)
    outbox.start()
    await asyncio.to_thread(gserver.stop)
    outbox.put("STARTED", "up")
    for i in range(500):
        outbox.put_log(f"line-{i}")
        if i % 100 == 99:
            outbox.put("PROGRESS", i // 5)
    outbox.put("COMPLETED", "", {"outputs": {}})
    await asyncio.sleep(1.5)
    assert outbox.pending > 0
    await asyncio.to_thread(gserver.start)
    assert await outbox.wait_empty(20)
    await outbox.close()

    events = worker_events(await api.get_run(run["id"]))
    lines = [line for e in events if e["type"] == "LOG" for line in e["msg"].split("\n")]
    assert lines == [f"line-{i}" for i in range(500)]
    assert [e["msg"] for e in events if e["type"] == "PROGRESS"] == [19, 39, 59, 79, 99]
    assert events[0]["type"] == "STARTED" and events[-1]["type"] == "COMPLETED"
    # Held lines between two PROGRESS events go out as one LOG event, not 100.
    assert len(events) == 1 + 5 + 5 + 1
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)


async def test_memory_bound_drops_the_oldest_held_log_lines_and_says_so(gserver, api):
    run = await assigned_run(api)
    outbox = Outbox(api, run["id"], 1, max_pending_bytes=20_000, backoff_s=0.05, max_backoff_s=0.5)
    outbox.start()
    await asyncio.to_thread(gserver.stop)
    outbox.put("STARTED", "up")
    for i in range(2000):
        outbox.put_log(f"line-{i:05d} " + "x" * 90)
    await asyncio.to_thread(gserver.start)
    assert await outbox.wait_empty(20)
    await outbox.close()

    events = worker_events(await api.get_run(run["id"]))
    assert events[0]["type"] == "STARTED"  # state-carrying events are never dropped
    lines = [line for e in events if e["type"] == "LOG" for line in e["msg"].split("\n")]
    notes = [line for line in lines if "were dropped" in line]
    assert notes and all("server was unreachable" in n for n in notes)
    kept = [line for line in lines if line.startswith("line-")]
    assert kept[-1].startswith("line-01999")  # the newest lines survive
    assert 0 < len(kept) < 2000
    assert kept == sorted(kept)  # and stay in order


async def test_an_event_for_a_finished_run_stops_the_attempt_and_drops_what_is_held(api):
    run = await assigned_run(api)
    await api.cancel_run(run["id"])
    rejected: list[str] = []
    outbox = Outbox(api, run["id"], 1, on_rejected=rejected.append)
    outbox.start()
    outbox.put("STARTED", "up")
    outbox.put_log("late line")
    assert await outbox.wait_empty(10)
    await outbox.close()
    assert len(rejected) == 1 and "locked" in rejected[0]
    assert outbox.pending == 0
    assert worker_events(await api.get_run(run["id"]))[-1]["type"] == "CANCELLED"


async def test_an_event_from_a_stale_attempt_is_refused_with_409_and_stops_the_attempt(api):
    run = await assigned_run(api)
    rejected: list[str] = []
    outbox = Outbox(api, run["id"], 2, on_rejected=rejected.append)
    outbox.start()
    outbox.put("STARTED", "from the future")
    assert await outbox.wait_empty(10)
    await outbox.close()
    assert len(rejected) == 1 and rejected[0].startswith("409")
    assert (await api.get_run(run["id"]))["state"] == "ASSIGNED"


def test_default_worker_id_is_the_hostname_plus_a_suffix_kept_across_restarts(tmp_path):
    first = default_worker_id(tmp_path / "a")
    assert default_worker_id(tmp_path / "a") == first
    other = default_worker_id(tmp_path / "b")
    assert other != first and other.rsplit("-", 1)[0] == first.rsplit("-", 1)[0]
