"""The outbox queries the sender relies on, against a real Store (no HTTP)."""

from __future__ import annotations

import time

from gyoza.models import EventDelivery, EventIn, EventType, Heartbeat, Resources
from gyoza.statemachine import RunSpec
from gyoza.store import Store


async def claimed_run(store: Store, delivery: EventDelivery) -> str:
    run, _ = await store.create_run(RunSpec(image="busybox", event_delivery=delivery), priority=5)
    await store.heartbeat(Heartbeat(worker_id="w", resources=Resources(cpu_cores=4, ram_mb=4096)), 5.0)
    outcome, _ = await store.claim("w", None)
    assert [op.run_id for op in outcome.result.ops] == [run.id]
    return run.id


async def test_outbox_queries_stay_fast_with_a_large_backlog_in_one_run(tmp_path) -> None:
    # Without an index on each run's pending queue these queries grow with the
    # square of the backlog (seconds at a few thousand rows).
    store = Store(str(tmp_path / "g.db"))
    await store.open()
    try:
        delivery = EventDelivery(url="http://127.0.0.1:9/hook", events=[EventType.LOG])
        run_id = await claimed_run(store, delivery)
        for i in range(3000):
            await store.append_event(run_id, EventIn(type=EventType.LOG, msg=f"line {i}"))
        t0 = time.perf_counter()
        for _ in range(5):
            (head,) = await store.due_deliveries(16)
            assert await store.due_deliveries(16, busy_runs=[run_id]) == []
            assert await store.next_delivery_at([run_id]) is None
            assert await store.next_delivery_at() is not None
        assert time.perf_counter() - t0 < 1.0
        assert head.event_id == min(d.event_id for d in await store.list_deliveries(run_id))
    finally:
        await store.close()


async def test_next_delivery_at_ignores_rows_queued_behind_a_backing_off_head(tmp_path) -> None:
    store = Store(str(tmp_path / "g.db"))
    await store.open()
    try:
        delivery = EventDelivery(url="http://127.0.0.1:9/hook", events=[EventType.LOG])
        run_id = await claimed_run(store, delivery)
        for i in range(3):
            await store.append_event(run_id, EventIn(type=EventType.LOG, msg=f"line {i}"))
        (head,) = await store.due_deliveries(16)
        later = time.time() + 60
        await store.record_delivery(head.id, delivered=False, give_up=False, status_code=503,
                                    error="HTTP 503", next_attempt_at=later)
        # The two rows behind the head are "due" by their own time but not eligible.
        assert await store.due_deliveries(16) == []
        assert await store.next_delivery_at() == later
    finally:
        await store.close()
