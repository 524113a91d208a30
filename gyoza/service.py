"""The gyoza domain service: what the HTTP routes call.

It validates what the models cannot (input schemas), calls the store (one
transaction per call), and wakes whoever waits on the result: long-poll
claims, long-poll event readers and the webhook sender. It also runs the
liveness loop that turns silent workers OFFLINE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from . import inputs as run_inputs
from .config import ServerConfig
from .errors import BadRequest
from .models import (
    ClaimResult,
    Delivery,
    EventIn,
    Heartbeat,
    OpAttempt,
    OpDefinition,
    OpDefinitionOut,
    OpRun,
    OpRunState,
    RunCreate,
    RunFromDefinition,
    RunPage,
    RunPatch,
    Worker,
)
from .statemachine import RunSpec
from .store import Store, WriteEffects

log = logging.getLogger("gyoza.server")

MAX_WAIT_S = 25.0


class Signal:
    """A broadcast wake-up: every waiter of the current generation wakes."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self.waiters = 0  # long-polls currently using this signal

    def waiter(self) -> asyncio.Future[None]:
        if self._future is None or self._future.done():
            self._future = asyncio.get_running_loop().create_future()
        return self._future

    def notify(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        self._future = None


async def wait_for_signal(future: asyncio.Future[None], timeout: float) -> None:
    if timeout <= 0:
        return
    try:
        await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        pass


class Service:
    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.config = config
        self.work = Signal()  # claimable work or free capacity may have appeared
        self._run_signals: dict[str, Signal] = {}
        self._announced_cancels: dict[str, frozenset[str]] = {}
        self._claiming: dict[str, int] = {}  # worker id -> long-poll claims waiting now
        self.on_new_events: Callable[[], None] = lambda: None  # the webhook sender's wake-up
        self._tasks: list[asyncio.Task[Any]] = []
        self._deliveries_seen = 0
        self.closing = False  # set at shutdown: long-polls answer at once

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._liveness_loop(), name="gyoza-liveness"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()

    def begin_shutdown(self) -> None:
        """End every open long-poll now, so shutdown never waits on them."""
        self.closing = True
        self.work.notify()
        for signal in list(self._run_signals.values()):
            signal.notify()
        self._run_signals.clear()

    async def _liveness_loop(self) -> None:
        # Check at least once per heartbeat interval (SPEC §4), more often
        # with a short timeout so that OFFLINE is never late by much.
        period = min(self.config.heartbeat_interval, self.config.worker_timeout / 4)
        while True:
            try:
                gone, fx = await self.store.expire_workers(
                    self.config.worker_timeout, alive=self._claiming
                )
                if gone:
                    log.warning("workers OFFLINE (no heartbeat for %.0fs): %s",
                                self.config.worker_timeout, ", ".join(gone))
                self._after(fx)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("liveness check failed; retrying")
            await asyncio.sleep(period)

    def _after(self, fx: WriteEffects) -> None:
        """Wake the waiters a committed write concerns."""
        for run_id in fx.run_ids:
            signal = self._run_signals.pop(run_id, None)
            if signal is not None:
                signal.notify()
        if fx.work_changed or fx.cancelled_on:
            self.work.notify()
        # Wake the webhook sender only when a commit added outbox rows (most
        # writes add none; waking it costs two queries).
        committed = self.store.deliveries_committed
        if committed != self._deliveries_seen:
            self._deliveries_seen = committed
            self.on_new_events()

    # -- definitions ---------------------------------------------------------------------

    async def upsert_definition(self, d: OpDefinition) -> tuple[OpDefinitionOut, bool]:
        run_inputs.check_schema(d.input_schema)
        run_inputs.check_schema(d.output_schema, "output_schema")
        return await self.store.upsert_definition(d)

    async def get_definition(self, name: str, version: str | None) -> OpDefinitionOut:
        return (await self.store.get_definition(name, version))[1]

    async def list_definitions(self) -> list[OpDefinitionOut]:
        return await self.store.list_definitions()

    # -- runs ----------------------------------------------------------------------------------

    async def create_run(self, body: RunCreate) -> OpRun:
        spec = RunSpec(
            image=body.image,
            command=body.command,
            env=body.env,
            inputs=body.inputs,
            timeout_s=body.timeout_s,
            event_delivery=body.event_delivery,
        )
        if body.constraints is not None:
            spec.constraints = body.constraints
        if body.retry_policy is not None:
            spec.retry_policy = body.retry_policy
        run, fx = await self.store.create_run(spec, priority=body.priority)
        self._after(fx)
        return run

    async def create_run_from_definition(
        self, name: str, version: str | None, body: RunFromDefinition
    ) -> OpRun:
        d, out = await self.store.get_definition(name, version)
        filled = run_inputs.validate_inputs(
            (d.name, d.version, out.updated_at), d.input_schema, body.inputs
        )
        spec = RunSpec(
            image=d.image,
            command=d.command,
            env=d.env,
            inputs=filled,
            constraints=d.constraints,
            retry_policy=d.retry_policy,
            event_delivery=body.event_delivery or d.event_delivery,
            timeout_s=d.timeout_s,
        )
        run, fx = await self.store.create_run(
            spec, priority=body.priority, definition=d.name, version=d.version
        )
        self._after(fx)
        return run

    async def get_run(self, run_id: str) -> OpRun:
        return await self.store.get_run(run_id)

    async def list_runs(
        self, *, state: str | None, definition: str | None, limit: str | None, cursor: str | None
    ) -> RunPage:
        try:
            st = OpRunState(state) if state else None
        except ValueError:
            names = ", ".join(s.value for s in OpRunState)
            raise BadRequest(f"state: must be one of {names}") from None
        n = _int_param("limit", limit, default=50, low=1, high=1000)
        cur = _int_param("cursor", cursor, default=None, low=0, high=2**62)
        return await self.store.list_runs(state=st, definition=definition, limit=n, cursor=cur)

    async def patch_run(self, run_id: str, patch: RunPatch) -> OpRun:
        run, fx = await self.store.patch_run(run_id, patch)
        self._after(fx)
        return run

    async def retry_run(self, run_id: str) -> OpRun:
        run, fx = await self.store.retry_run(run_id)
        self._after(fx)
        return run

    async def add_event(self, run_id: str, ev: EventIn) -> OpRun:
        run, fx = await self.store.append_event(run_id, ev)
        self._after(fx)
        return run

    async def events(
        self, run_id: str, *, after: str | None, wait: str | None, limit: str | None
    ) -> list[bytes]:
        """Events after ``after``; with ``wait``, long-poll until one exists."""
        after_id = _int_param("after", after, default=0, low=0, high=2**62)
        n = _int_param("limit", limit, default=None, low=1, high=100_000)
        timeout = _wait_param(wait)
        deadline = time.monotonic() + timeout
        if timeout <= 0:
            return (await self.store.events_after(run_id, after_id, n))[0]
        while True:
            # Registered before reading, so an event committed in between wakes us.
            signal = self._run_signals.setdefault(run_id, Signal())
            signal.waiters += 1
            try:
                waiter = signal.waiter()
                bodies, terminal = await self.store.events_after(run_id, after_id, n)
                remaining = deadline - time.monotonic()
                if bodies or terminal or remaining <= 0 or self.closing:
                    return bodies
                await wait_for_signal(waiter, remaining)
            finally:
                signal.waiters -= 1
                if signal.waiters == 0 and self._run_signals.get(run_id) is signal:
                    del self._run_signals[run_id]  # nobody waits: keep the map small

    async def attempts(self, run_id: str) -> list[OpAttempt]:
        return await self.store.get_attempts(run_id)

    async def list_deliveries(self, run_id: str) -> list[Delivery]:
        return await self.store.list_deliveries(run_id)

    async def redeliver(self, run_id: str, delivery_id: int) -> Delivery:
        """Requeue a FAILED webhook delivery and wake the sender."""
        await self.store.redeliver(run_id, delivery_id)
        self.on_new_events()
        deliveries = await self.store.list_deliveries(run_id)
        return next(d for d in deliveries if d.id == delivery_id)

    # -- workers -------------------------------------------------------------------------------------

    async def heartbeat(self, hb: Heartbeat) -> Worker:
        worker, fx = await self.store.heartbeat(hb, self.config.heartbeat_interval)
        self._after(fx)
        return worker

    async def list_workers(self) -> list[Worker]:
        return await self.store.list_workers()

    async def claim(self, worker_id: str, *, wait: str | None, max_ops: str | None) -> ClaimResult:
        """Hand out work that fits; with ``wait``, long-poll until some does.

        No polling loop: the claim is retried only when a write signals that
        work or capacity may have appeared, or when a backoff expires.
        """
        n = _int_param("max", max_ops, default=None, low=0, high=100_000)
        timeout = _wait_param(wait)
        deadline = time.monotonic() + timeout
        while True:
            waiter = self.work.waiter()
            outcome, fx = await self.store.claim(worker_id, n)
            self._after(fx)
            result = outcome.result
            cancels = frozenset(result.cancel)
            fresh_cancel = bool(cancels - self._announced_cancels.get(worker_id, frozenset()))
            self._announced_cancels[worker_id] = cancels
            remaining = deadline - time.monotonic()
            if result.ops or fresh_cancel or remaining <= 0 or self.closing:
                return result
            if outcome.next_ready_at is not None:
                remaining = min(remaining, max(outcome.next_ready_at - time.time(), 0) + 0.005)
            # A worker waiting here is alive: the liveness loop refreshes its clock.
            self._claiming[worker_id] = self._claiming.get(worker_id, 0) + 1
            try:
                await wait_for_signal(waiter, remaining)
            finally:
                if self._claiming[worker_id] <= 1:
                    del self._claiming[worker_id]
                else:
                    self._claiming[worker_id] -= 1


def _int_param(name: str, raw: str | None, *, default, low: int, high: int):
    if raw is None or raw == "":
        return default
    # Plain ASCII digits only: int() would also take " 5", "1_0" and "١".
    digits = raw[1:] if raw.startswith("-") else raw
    if not (raw.isascii() and digits.isdigit() and len(raw) <= 20):
        raise BadRequest(f"{name}: must be an integer, got {raw[:50]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(f"{name}: must be between {low} and {high}")
    return value


def _wait_param(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"wait: must be a number of seconds, got {raw[:50]!r}") from None
    if value != value or value < 0:
        raise BadRequest("wait: must be a number of seconds >= 0")
    return min(value, MAX_WAIT_S)
