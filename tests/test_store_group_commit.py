"""Group commit in the store's writer: concurrent writes share one COMMIT,
yet each API call stays atomic and a failing call undoes only itself."""

from __future__ import annotations

import asyncio
import sqlite3

import msgspec
import pytest

from gyoza.errors import BadRequest, NotFound
from gyoza.models import EventIn, EventType
from gyoza.statemachine import RunSpec
from gyoza.store import Store


@pytest.fixture
async def store(tmp_path):
    s = Store(str(tmp_path / "g.db"))
    await s.open()
    yield s
    await s.close()


async def test_concurrent_writes_are_batched_and_all_committed(store: Store) -> None:
    commits = 0
    real = store._in_batch

    def counting(batch):
        nonlocal commits
        commits += 1
        return real(batch)

    store._in_batch = counting  # type: ignore[method-assign]
    spec = RunSpec(image="busybox", inputs={})
    results = await asyncio.gather(*[store.create_run(spec, priority=5) for _ in range(200)])
    ids = {run.id for run, _ in results}
    assert len(ids) == 200
    assert commits < 200  # the queued writes were committed in batches
    page = await store.list_runs(state=None, definition=None, limit=1000, cursor=None)
    assert {r.id for r in page.runs} == ids


async def test_a_failing_call_rolls_back_only_itself(store: Store) -> None:
    spec = RunSpec(image="busybox", inputs={})

    def half_then_fail(c: sqlite3.Connection) -> None:
        # A write that changes something and then fails: its change must not stay.
        c.execute("UPDATE runs SET priority = 99")
        raise BadRequest("refused on purpose")

    first, _ = await store.create_run(spec, priority=5)
    # Keep the writer busy so the next calls queue up and share one batch.
    results = await asyncio.gather(
        store.create_run(spec, priority=5),
        store.create_run(spec, priority=6),
        store._write(half_then_fail),
        store.append_event("no-such-run", EventIn(type=EventType.LOG, msg="x")),
        store.create_run(spec, priority=7),
        return_exceptions=True,
    )
    assert isinstance(results[2], BadRequest)
    assert isinstance(results[3], NotFound)
    created = [r[0] for r in results if isinstance(r, tuple)]
    assert len(created) == 3
    page = await store.list_runs(state=None, definition=None, limit=100, cursor=None)
    assert sorted(r.priority for r in page.runs) == [5, 5, 6, 7]
    assert {r.id for r in page.runs} == {first.id, *(r.id for r in created)}
    # Each created run has its QUEUED event and first attempt.
    for run in created:
        full = await store.get_run(run.id)
        assert len(full.events) == 1 and len(full.attempts) == 1


async def test_a_cancelled_caller_does_not_break_the_queue(store: Store) -> None:
    spec = RunSpec(image="busybox", inputs={})
    tasks = [asyncio.create_task(store.create_run(spec, priority=5)) for _ in range(20)]
    await asyncio.sleep(0)
    tasks[5].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(d, tuple) for d in done) >= 19
    # The writer still works afterwards.
    run, _ = await store.create_run(spec, priority=5)
    assert (await store.get_run(run.id)).id == run.id


async def test_log_events_then_state_changes_are_all_stored(store: Store) -> None:
    """LOG events write only the run's event counter; later changes still write everything."""
    from gyoza.models import Heartbeat, Resources, RunPatch

    spec = RunSpec(image="busybox", inputs={})
    run, _ = await store.create_run(spec, priority=5)
    await store.heartbeat(Heartbeat(worker_id="w", resources=Resources(cpu_cores=4, ram_mb=1000)), 5)
    outcome, _ = await store.claim("w", 1)
    assert [op.run_id for op in outcome.result.ops] == [run.id]
    for i in range(3):
        await store.append_event(run.id, EventIn(type=EventType.LOG, msg=f"line {i}"))
    await store.patch_run(run.id, RunPatch(priority=9))
    await store.append_event(run.id, EventIn(type=EventType.STARTED))
    await store.append_event(run.id, EventIn(type=EventType.LOG, msg="after start"))
    full = await store.get_run(run.id)
    assert full.state.value == "RUNNING" and full.priority == 9 and full.worker_id == "w"
    types = [msgspec.json.decode(bytes(e))["type"] for e in full.events]
    assert types == ["QUEUED", "ASSIGNED", "LOG", "LOG", "LOG", "STARTED", "LOG"]
    ids = [msgspec.json.decode(bytes(e))["id"] for e in full.events]
    assert ids == list(range(1, 8))
    # The counter kept up: the next event gets id 8.
    await store.append_event(run.id, EventIn(type=EventType.LOG, msg="x"))
    assert (await store.events_after(run.id, 7, None))[0][0].startswith(b'{"id":8')
