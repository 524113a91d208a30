"""All persistent state, in one SQLite file (WAL), and all SQL of gyoza.

Design:
- ``Store`` is the only class that talks SQL. Its async methods are shaped by
  what the domain needs (create a run, append an event, claim, heartbeat...),
  so another backend can implement the same interface.
- Every write is one function run in the writer connection's thread
  (``_write``), atomically: an API call is all or nothing, and concurrent
  claims are serialised by construction. Writes that queue up while one is
  being committed are committed together (group commit): one ``BEGIN
  IMMEDIATE``/``COMMIT`` around them, each call inside its own ``SAVEPOINT``,
  so a call that fails rolls back only its own changes. A caller hears back
  only after the ``COMMIT``; one commit per batch instead of one per call is
  what lets many concurrent clients write quickly.
- Reads use a second connection; WAL lets them run beside the writer.
- The rules (state machine, placement) are pure functions from
  ``statemachine`` and ``scheduler``; the store loads rows, calls them, and
  writes back what changed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiosqlite
import msgspec

from . import scheduler, statemachine
from .errors import BadRequest, NotFound
from .models import (
    ACTIVE_STATES,
    ClaimResult,
    Constraints,
    Delivery,
    Event,
    EventIn,
    EventType,
    FreeResources,
    Heartbeat,
    OpAttempt,
    OpDefinition,
    OpDefinitionOut,
    OpRun,
    OpRunState,
    Resources,
    RunPage,
    RunPatch,
    Worker,
    WorkerOpRun,
    public_delivery,
)
from .statemachine import AttemptRow, Change, RunRow, RunSpec

T = TypeVar("T")
S = OpRunState

_enc = msgspec.json.Encoder()
_dec_any = msgspec.json.Decoder()
_dec_spec = msgspec.json.Decoder(RunSpec)
_dec_constraints = msgspec.json.Decoder(Constraints)
_dec_resources = msgspec.json.Decoder(Resources)
_dec_definition = msgspec.json.Decoder(OpDefinition)
_dec_ints = msgspec.json.Decoder(list[int])
_dec_strs = msgspec.json.Decoder(list[str])


class StoreError(Exception):
    """The database file cannot be used (corrupt, foreign, too new)."""


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


MIGRATIONS: list[str] = [
    # 1: the initial schema.
    """
    CREATE TABLE definitions (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        body BLOB NOT NULL,
        first_seq INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (name, version)
    ) WITHOUT ROWID;
    CREATE INDEX definitions_latest ON definitions (name, first_seq);

    CREATE TABLE runs (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        definition TEXT,
        version TEXT,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        worker_id TEXT,
        gpu_ids BLOB NOT NULL DEFAULT '[]',
        error TEXT,
        scheduling TEXT,
        outputs BLOB,
        spec BLOB NOT NULL,
        constraints BLOB NOT NULL,
        cpu_milli INTEGER NOT NULL,
        ram_mb INTEGER NOT NULL,
        gpus INTEGER NOT NULL,
        not_before REAL NOT NULL DEFAULT 0,
        reserved_on TEXT,
        assigned_epoch REAL,
        last_event_id INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    );
    CREATE INDEX runs_queue ON runs (priority DESC, seq) WHERE state = 'PENDING';
    CREATE INDEX runs_backoff ON runs (not_before) WHERE state = 'PENDING';
    CREATE INDEX runs_reserved ON runs (reserved_on) WHERE reserved_on IS NOT NULL;
    CREATE INDEX runs_by_state ON runs (state, seq);
    CREATE INDEX runs_by_definition ON runs (definition, seq);

    CREATE TABLE attempts (
        run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        state TEXT NOT NULL,
        worker_id TEXT,
        gpu_ids BLOB NOT NULL DEFAULT '[]',
        reason TEXT,
        exit_code INTEGER,
        error TEXT,
        created_at TEXT NOT NULL,
        assigned_at TEXT,
        started_at TEXT,
        finished_at TEXT,
        PRIMARY KEY (run_seq, number)
    ) WITHOUT ROWID;

    CREATE TABLE events (
        run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
        id INTEGER NOT NULL,
        type TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        seq INTEGER,
        body BLOB NOT NULL,
        PRIMARY KEY (run_seq, id)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX events_dedup ON events (run_seq, attempt, seq) WHERE seq IS NOT NULL;

    CREATE TABLE workers (
        worker_id TEXT PRIMARY KEY,
        resources BLOB NOT NULL,
        tags BLOB NOT NULL,
        status TEXT NOT NULL,
        first_seen_at TEXT NOT NULL,
        last_heartbeat_at TEXT NOT NULL,
        last_seen REAL NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
        event_id INTEGER NOT NULL,
        webhook_id TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'PENDING',
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_status_code INTEGER,
        last_error TEXT,
        body BLOB NOT NULL,
        created_at TEXT NOT NULL,
        delivered_at TEXT,
        UNIQUE (run_seq, event_id)
    );
    CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'PENDING';
    """,
    # 2: the head of each run's delivery queue in O(log n), not a scan of the run's rows
    # (without it the sender's queries grow with the square of a run's backlog).
    """
    CREATE INDEX deliveries_pending ON deliveries (run_seq, id) WHERE status = 'PENDING';
    """,
    # 3: deliveries_due is never used since 2 (the sender walks queue heads);
    # each event with a webhook paid for maintaining it.
    """
    DROP INDEX IF EXISTS deliveries_due;
    """,
    # 4: holds of attempts that ended while their container may still run
    # (a cancelled run retried at once); see Change.lingering.
    """
    CREATE TABLE lingering_holds (
        run_seq INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        worker_id TEXT NOT NULL,
        gpu_ids BLOB NOT NULL,
        PRIMARY KEY (run_seq, attempt)
    ) WITHOUT ROWID;
    CREATE INDEX lingering_holds_worker ON lingering_holds (worker_id);
    """,
]

# The head (oldest PENDING delivery) of each run's webhook queue, found with
# one index probe per run (a loose index scan over deliveries_pending), not a
# walk over every PENDING row: a chatty run can have thousands queued.
_PENDING_HEADS = (
    "WITH RECURSIVE runs_with(run_seq) AS ("
    "SELECT (SELECT min(run_seq) FROM deliveries INDEXED BY deliveries_pending "
    "WHERE status='PENDING') "
    "UNION ALL SELECT (SELECT min(run_seq) FROM deliveries INDEXED BY deliveries_pending "
    "WHERE status='PENDING' AND run_seq > runs_with.run_seq) "
    "FROM runs_with WHERE runs_with.run_seq IS NOT NULL), "
    "heads(id) AS (SELECT (SELECT min(id) FROM deliveries INDEXED BY deliveries_pending "
    "WHERE status='PENDING' AND run_seq = runs_with.run_seq) "
    "FROM runs_with WHERE runs_with.run_seq IS NOT NULL) "
)

# Events that change nothing on the run but its event counter and updated_at.
_COUNTER_EVENTS = frozenset({EventType.LOG, EventType.PROGRESS})


def _counters_only(ch: Change) -> bool:
    """Whether a change moved only the run's event counter and updated_at."""
    return bool(ch.events) and not ch.attempts and all(e.type in _COUNTER_EVENTS for e in ch.events)


_RUN_COLS = (
    "seq, id, definition, version, state, priority, attempt, worker_id, gpu_ids, error, "
    "scheduling, outputs, spec, not_before, reserved_on, assigned_epoch, last_event_id, "
    "created_at, updated_at, started_at, finished_at"
)
_ATTEMPT_COLS = (
    "number, state, worker_id, gpu_ids, reason, exit_code, error, created_at, "
    "assigned_at, started_at, finished_at"
)


def _run_from_row(r: Sequence[Any]) -> RunRow:
    return RunRow(
        seq=r[0],
        id=r[1],
        definition=r[2],
        version=r[3],
        state=S(r[4]),
        priority=r[5],
        attempt=r[6],
        worker_id=r[7],
        gpu_ids=_dec_ints.decode(r[8]),
        error=r[9],
        scheduling=r[10],
        outputs=None if r[11] is None else _dec_any.decode(r[11]),
        spec=_dec_spec.decode(r[12]),
        not_before=r[13],
        reserved_on=r[14],
        assigned_epoch=r[15],
        last_event_id=r[16],
        created_at=r[17],
        updated_at=r[18],
        started_at=r[19],
        finished_at=r[20],
    )


def _attempt_from_row(r: Sequence[Any]) -> AttemptRow:
    return AttemptRow(
        number=r[0],
        state=S(r[1]),
        worker_id=r[2],
        gpu_ids=_dec_ints.decode(r[3]),
        reason=r[4],
        exit_code=r[5],
        error=r[6],
        created_at=r[7],
        assigned_at=r[8],
        started_at=r[9],
        finished_at=r[10],
    )


def to_op_run(run: RunRow) -> OpRun:
    s = run.spec
    return OpRun(
        id=run.id,
        definition=run.definition,
        version=run.version,
        image=s.image,
        command=s.command,
        env=s.env,
        inputs=s.inputs,
        outputs=run.outputs,
        priority=run.priority,
        constraints=s.constraints,
        retry_policy=s.retry_policy,
        event_delivery=public_delivery(s.event_delivery),
        timeout_s=s.timeout_s,
        state=run.state,
        attempt=run.attempt,
        worker_id=run.worker_id,
        gpu_ids=run.gpu_ids,
        error=run.error,
        scheduling=run.scheduling,
        created_at=run.created_at,
        updated_at=run.updated_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


def to_attempt(run_id: str, a: AttemptRow) -> OpAttempt:
    return OpAttempt(
        run_id=run_id,
        number=a.number,
        state=a.state,
        worker_id=a.worker_id,
        gpu_ids=a.gpu_ids,
        reason=a.reason,  # type: ignore[arg-type]
        exit_code=a.exit_code,
        error=a.error,
        created_at=a.created_at,
        assigned_at=a.assigned_at,
        started_at=a.started_at,
        finished_at=a.finished_at,
    )


def to_definition_out(d: OpDefinition, created_at: str, updated_at: str) -> OpDefinitionOut:
    return OpDefinitionOut(
        name=d.name,
        version=d.version,
        image=d.image,
        description=d.description,
        command=d.command,
        env=d.env,
        input_schema=d.input_schema,
        output_schema=d.output_schema,
        constraints=d.constraints,
        retry_policy=d.retry_policy,
        event_delivery=public_delivery(d.event_delivery),
        timeout_s=d.timeout_s,
        created_at=created_at,
        updated_at=updated_at,
    )


@dataclass
class LingeringHold:
    """Resources an ended attempt's container may still use on a worker."""

    worker_id: str
    run_seq: int
    run_id: str
    attempt: int
    constraints: Constraints
    gpu_ids: list[int]


@dataclass
class ClaimOutcome:
    result: ClaimResult
    next_ready_at: float | None  # earliest backoff expiry among PENDING runs


@dataclass
class WriteEffects:
    """What a write changed that waiters in the service care about."""

    run_ids: list[str]
    work_changed: bool  # something claimable or some capacity appeared
    cancelled_on: set[str]  # workers that must learn of a cancel


@dataclass
class DeliveryJob:
    id: int
    run_id: str
    event_id: int
    webhook_id: str
    attempts: int
    max_attempts: int
    body: bytes
    url: str
    secret: str | None
    headers: dict[str, str]


class Store:
    """The gyoza database. ``await store.open()`` before use."""

    def __init__(self, path: str, *, sync: str = "normal") -> None:
        self.path = path
        self.sync = sync
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        # Valid while only this process writes (always: one server per file).
        self._online: list[scheduler.WorkerShape] | None = None
        self._explained: dict[bytes, str | None] = {}
        # Group commit: writes waiting for the one in flight, and the task
        # that commits them in batches.
        self._queued: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._writing = False
        self._flusher: asyncio.Task[None] | None = None
        # Outbox rows committed so far (read on the event loop, so the webhook
        # sender is woken only by writes that gave it something to send), and
        # those written by the transaction in progress (writer thread only).
        self.deliveries_committed = 0
        self._deliveries_pending = 0
        # Run rows as _load_run read them (the object and its stored values),
        # so _save can write only what changed (writer thread only).

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        try:
            self._w = await self._connect()
            await self._w._execute(self._prepare, self._w._conn, True)
            self._r = await self._connect()
            await self._r._execute(self._prepare, self._r._conn, False)
        except (sqlite3.DatabaseError, StoreError) as exc:
            # Close both connections: their threads would otherwise keep the
            # process alive after the error (a hang instead of an exit).
            await self.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"{self.path} is not a usable gyoza database: {exc}") from None

    async def _connect(self) -> aiosqlite.Connection:
        conn = aiosqlite.connect(self.path, isolation_level=None)
        try:
            return await conn
        except BaseException:
            # aiosqlite stops its thread without waiting for it: wait here,
            # while the loop still runs, or the thread dies with a traceback
            # once the loop is closed (e.g. --db naming a directory).
            await asyncio.to_thread(conn._thread.join, 5)
            raise

    def _prepare(self, conn: sqlite3.Connection, writer: bool) -> None:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA foreign_keys = ON")
        if not writer:
            return
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "gyoza_schema" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite file of another program (no gyoza_schema table); "
                "pass --db with a new or gyoza file"
            )
        if tables:
            # An existing gyoza file: refuse it *before* writing anything to it
            # (switching to WAL rewrites the header), so a refused file is untouched.
            current = conn.execute("SELECT max(version) FROM gyoza_schema").fetchone()[0] or 0
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"{self.path} has schema version {current}, newer than this gyoza "
                    f"({len(MIGRATIONS)}); upgrade gyoza"
                )
            problem = conn.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise StoreError(f"{self.path} failed its integrity check: {problem}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {'FULL' if self.sync == 'full' else 'NORMAL'}")
        conn.execute("CREATE TABLE IF NOT EXISTS gyoza_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM gyoza_schema").fetchone()
        current = row[0] or 0
        if current > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} has schema version {current}, newer than this gyoza "
                f"({len(MIGRATIONS)}); upgrade gyoza"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO gyoza_schema (version) VALUES (?)", (version,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            try:
                await self._flusher
            except BaseException:
                pass
        for conn in (self._r, self._w):
            if conn is not None:
                try:
                    await conn.close()
                except Exception:
                    pass
        self._r = self._w = None

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` atomically; return once it is committed."""
        assert self._w is not None, "store is not open"
        if not self._writing:
            # Nothing in flight: run it at once, in a transaction of its own.
            self._writing = True
            try:
                return await self._w._execute(self._in_tx, fn, args)
            finally:
                self._writing = False
                self._start_flusher()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((fn, args, future))
        return await future

    _MAX_BATCH = 256

    def _start_flusher(self) -> None:
        if self._queued and not self._writing:
            self._writing = True
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Commit the queued writes, a batch per transaction, until none is left."""
        try:
            while self._queued and self._w is not None:
                batch = self._queued[: self._MAX_BATCH]
                del self._queued[: self._MAX_BATCH]
                try:
                    outcomes = await self._w._execute(self._in_batch, batch)
                except BaseException as exc:  # the connection itself failed
                    outcomes = [(False, exc)] * len(batch)
                for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():  # its caller went away; the write still happened
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
            for _, _, future in self._queued:  # the store was closed under them
                if not future.done():
                    future.set_exception(RuntimeError("store is closed"))
            self._queued.clear()
        finally:
            self._writing = False

    def _in_batch(
        self, batch: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]]
    ) -> list[tuple[bool, Any]]:
        """One transaction for several writes, each inside its own savepoint."""
        if len(batch) == 1:
            fn, args, _ = batch[0]
            try:
                return [(True, self._in_tx(fn, args))]
            except Exception as exc:
                return [(False, exc)]
        conn = self._w._conn  # type: ignore[union-attr]
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, args, _ in batch:
                conn.execute("SAVEPOINT gyoza_call")
                pending = self._deliveries_pending
                try:
                    result = fn(conn, *args)
                except Exception as exc:
                    if not conn.in_transaction:
                        raise  # SQLite rolled back the whole transaction
                    conn.execute("ROLLBACK TO gyoza_call")
                    conn.execute("RELEASE gyoza_call")
                    self._forget_caches()
                    self._deliveries_pending = pending
                    outcomes.append((False, exc))
                    continue
                conn.execute("RELEASE gyoza_call")
                outcomes.append((True, result))
            conn.execute("COMMIT")
        except Exception as exc:
            # Nothing of this batch was committed: every call in it fails.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._forget_caches()
            self._deliveries_pending = 0
            return [(False, exc)] * len(batch)
        self._publish_deliveries()
        return outcomes

    def _forget_caches(self) -> None:
        """After a rollback: the caches may describe writes that never happened."""
        self._online = None
        self._explained.clear()

    def _in_tx(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._w._conn  # type: ignore[union-attr]
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._forget_caches()
            self._deliveries_pending = 0
            raise
        self._publish_deliveries()
        return result

    def _publish_deliveries(self) -> None:
        if self._deliveries_pending:
            self.deliveries_committed += self._deliveries_pending
            self._deliveries_pending = 0

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._r is not None, "store is not open"
        return await self._r._execute(self._in_read, fn, args)

    def _in_read(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._r._conn  # type: ignore[union-attr]
        conn.execute("BEGIN")
        try:
            return fn(conn, *args)
        finally:
            conn.execute("COMMIT")

    async def integrity_check(self) -> str:
        return await self._read(lambda c: c.execute("PRAGMA integrity_check").fetchone()[0])

    # -- definitions -------------------------------------------------------------

    async def upsert_definition(self, d: OpDefinition) -> tuple[OpDefinitionOut, bool]:
        return await self._write(self._upsert_definition, d)

    def _upsert_definition(self, c: sqlite3.Connection, d: OpDefinition):
        now = iso(time.time())
        d = msgspec.structs.replace(d, created_at=None, updated_at=None)
        row = c.execute(
            "SELECT created_at FROM definitions WHERE name=? AND version=?", (d.name, d.version)
        ).fetchone()
        if row:
            c.execute(
                "UPDATE definitions SET body=?, updated_at=? WHERE name=? AND version=?",
                (_enc.encode(d), now, d.name, d.version),
            )
            return to_definition_out(d, row[0], now), False
        c.execute(
            "INSERT INTO definitions (name, version, body, first_seq, created_at, updated_at) "
            "VALUES (?, ?, ?, (SELECT coalesce(max(first_seq), 0) + 1 FROM definitions), ?, ?)",
            (d.name, d.version, _enc.encode(d), now, now),
        )
        return to_definition_out(d, now, now), True

    async def get_definition(self, name: str, version: str | None) -> tuple[OpDefinition, OpDefinitionOut]:
        """The full definition (with its webhook secret) and its public form."""
        return await self._read(self._get_definition, name, version)

    def _get_definition(self, c: sqlite3.Connection, name: str, version: str | None):
        if version is None:
            row = c.execute(
                "SELECT body, created_at, updated_at FROM definitions WHERE name=? "
                "ORDER BY first_seq DESC LIMIT 1",
                (name,),
            ).fetchone()
        else:
            row = c.execute(
                "SELECT body, created_at, updated_at FROM definitions WHERE name=? AND version=?",
                (name, version),
            ).fetchone()
        if row is None:
            what = f"definition {name!r}" + (f" version {version!r}" if version else "")
            raise NotFound(f"no {what}; list them with GET /definitions")
        d = _dec_definition.decode(row[0])
        return d, to_definition_out(d, row[1], row[2])

    async def list_definitions(self) -> list[OpDefinitionOut]:
        def q(c: sqlite3.Connection):
            rows = c.execute(
                "SELECT body, created_at, updated_at FROM definitions ORDER BY name, first_seq"
            )
            return [to_definition_out(_dec_definition.decode(b), ca, ua) for b, ca, ua in rows]

        return await self._read(q)

    # -- runs ----------------------------------------------------------------------

    async def create_run(
        self, spec: RunSpec, *, priority: int, definition: str | None = None, version: str | None = None
    ) -> tuple[OpRun, WriteEffects]:
        return await self._write(self._create_run, spec, priority, definition, version)

    def _create_run(self, c: sqlite3.Connection, spec: RunSpec, priority: int, definition, version):
        epoch = time.time()
        now = iso(epoch)
        run = RunRow(
            seq=0,
            id=uuid.uuid4().hex,
            definition=definition,
            version=version,
            spec=spec,
            state=S.PENDING,
            priority=priority,
            attempt=1,
            created_at=now,
            updated_at=now,
        )
        cons = _enc.encode(spec.constraints)
        run.scheduling = self._explain(c, cons, spec.constraints)
        ch = Change(run=run, current=statemachine.new_attempt(1, now), now=now, epoch=epoch)
        ch.attempts.append(ch.current)  # type: ignore[arg-type]
        ch.emit(EventType.QUEUED, "queued")
        # The row goes in complete (last_event_id included), so _save need not update it.
        cur = c.execute(
            "INSERT INTO runs (id, definition, version, state, priority, attempt, spec, "
            "constraints, cpu_milli, ram_mb, gpus, scheduling, last_event_id, created_at, "
            "updated_at) VALUES (?, ?, ?, 'PENDING', ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run.id,
                definition,
                version,
                priority,
                _enc.encode(spec),
                cons,
                spec.constraints.cpu_milli,
                spec.constraints.ram_mb,
                spec.constraints.gpus,
                run.scheduling,
                run.last_event_id,
                now,
                run.updated_at,
            ),
        )
        run.seq = cur.lastrowid  # type: ignore[assignment]
        self._save(c, [ch], runs_stored=True)
        return to_op_run(run), WriteEffects([run.id], True, set())

    def _load_run(self, c: sqlite3.Connection, run_id: str, *, with_attempt: bool = True) -> Change:
        row = c.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}; list runs with GET /runs")
        run = _run_from_row(row)
        current = None
        if with_attempt:
            arow = c.execute(
                f"SELECT {_ATTEMPT_COLS} FROM attempts WHERE run_seq=? AND number=?",
                (run.seq, run.attempt),
            ).fetchone()
            current = _attempt_from_row(arow)
        epoch = time.time()
        return Change(run=run, current=current, now=iso(epoch), epoch=epoch)

    def _mutate(self, c: sqlite3.Connection, run_id: str, apply: Callable[[Change], None]):
        return self._apply(c, self._load_run(c, run_id), apply)

    def _apply(self, c: sqlite3.Connection, ch: Change, apply: Callable[[Change], None]):
        """Apply a state-machine function to a loaded run and write back the change."""
        was = ch.run.state
        reserved = ch.run.reserved_on
        apply(ch)
        self._save(c, [ch])
        return to_op_run(ch.run), self._effects([(ch, was, reserved)])

    @staticmethod
    def _effects(items: Iterable[tuple[Change, OpRunState, str | None]]) -> WriteEffects:
        fx = WriteEffects([], False, set())
        for ch, was, reserved in items:
            run = ch.run
            fx.run_ids.append(run.id)
            if ch.requeued or ch.released or (run.state is S.PENDING and was is not S.PENDING):
                fx.work_changed = True
            if run.state.terminal and reserved and run.reserved_on:
                fx.cancelled_on.add(run.reserved_on)
        return fx

    async def append_event(self, run_id: str, ev: EventIn) -> tuple[OpRun, WriteEffects]:
        return await self._write(self._append_event, run_id, ev)

    def _append_event(self, c: sqlite3.Connection, run_id: str, ev: EventIn):
        # LOG and PROGRESS never touch the attempt row: skip reading it.
        ch = self._load_run(c, run_id, with_attempt=ev.type not in _COUNTER_EVENTS)
        if ev.seq is not None and ev.attempt is not None:
            dup = c.execute(
                "SELECT 1 FROM events WHERE run_seq=? AND attempt=? AND seq=?",
                (ch.run.seq, ev.attempt, ev.seq),
            ).fetchone()
            if dup:
                return to_op_run(ch.run), WriteEffects([], False, set())
        return self._apply(c, ch, lambda ch: statemachine.apply_event(ch, ev))

    async def patch_run(self, run_id: str, patch: RunPatch) -> tuple[OpRun, WriteEffects]:
        return await self._write(self._mutate, run_id, lambda ch: statemachine.apply_patch(ch, patch))

    async def retry_run(self, run_id: str) -> tuple[OpRun, WriteEffects]:
        return await self._write(self._mutate, run_id, statemachine.manual_retry)

    def _save(self, c: sqlite3.Connection, changes: Sequence[Change], *, runs_stored: bool = False) -> None:
        """Write back runs, touched attempts, new events and their outbox rows.

        ``runs_stored``: the run rows were just inserted as they are; skip their UPDATE.
        """
        if not changes:
            return
        for ch in changes:
            if ch.run.state is S.PENDING and ch.requeued:
                cons = _enc.encode(ch.run.spec.constraints)
                ch.run.scheduling = self._explain(c, cons, ch.run.spec.constraints)
            elif ch.run.state is not S.PENDING:
                ch.run.scheduling = None
        if not runs_stored:
            rows = [
                (
                    r,
                    (
                        r.state.value,
                        r.priority,
                        r.attempt,
                        r.worker_id,
                        _enc.encode(r.gpu_ids),
                        r.error,
                        r.scheduling,
                        None if r.outputs is None else _enc.encode(r.outputs),
                        r.not_before,
                        r.reserved_on,
                        r.assigned_epoch,
                        r.last_event_id,
                        r.updated_at,
                        r.started_at,
                        r.finished_at,
                        r.seq,
                    ),
                )
                for r in (ch.run for ch in changes)
            ]
            full, light = [], []
            for ch, (r, params) in zip(changes, rows, strict=True):
                if _counters_only(ch):
                    # Leave the indexed columns alone, so the commit writes fewer pages.
                    light.append((r.last_event_id, r.updated_at, r.seq))
                else:
                    full.append(params)
            if full:
                c.executemany(
                    "UPDATE runs SET state=?, priority=?, attempt=?, worker_id=?, gpu_ids=?, "
                    "error=?, scheduling=?, outputs=?, not_before=?, reserved_on=?, "
                    "assigned_epoch=?, last_event_id=?, updated_at=?, started_at=?, "
                    "finished_at=? WHERE seq=?",
                    full,
                )
            if light:
                c.executemany("UPDATE runs SET last_event_id=?, updated_at=? WHERE seq=?", light)
        c.executemany(
            f"INSERT OR REPLACE INTO attempts (run_seq, {_ATTEMPT_COLS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    ch.run.seq,
                    a.number,
                    a.state.value,
                    a.worker_id,
                    _enc.encode(a.gpu_ids),
                    a.reason,
                    a.exit_code,
                    a.error,
                    a.created_at,
                    a.assigned_at,
                    a.started_at,
                    a.finished_at,
                )
                for ch in changes
                for a in ch.attempts
            ],
        )
        lingering = [
            (ch.run.seq, ch.lingering[1], ch.lingering[0], _enc.encode(ch.lingering[2]))
            for ch in changes
            if ch.lingering is not None
        ]
        if lingering:
            c.executemany(
                "INSERT OR REPLACE INTO lingering_holds (run_seq, attempt, worker_id, gpu_ids) "
                "VALUES (?, ?, ?, ?)",
                lingering,
            )
        event_rows = []
        delivery_rows = []
        for ch in changes:
            delivery = ch.run.spec.event_delivery
            run_json: bytes | None = None
            for e in ch.events:
                body = _enc.encode(
                    Event(
                        id=e.id,
                        type=e.type,
                        t=e.t,
                        msg=e.msg,
                        state=e.state,
                        attempt=e.attempt,
                        payload=e.payload,
                        seq=e.seq,
                    )
                )
                event_rows.append((ch.run.seq, e.id, e.type.value, e.attempt, e.seq, body))
                if delivery is not None and delivery.wants(e.type):
                    if run_json is None:
                        run_json = _enc.encode(to_op_run(ch.run))
                    payload = (
                        b'{"type":"run.' + e.type.value.encode() + b'","timestamp":"'
                        + e.t.encode() + b'","data":{"run":' + run_json + b',"event":' + body + b"}}"
                    )
                    delivery_rows.append(
                        (
                            ch.run.seq,
                            e.id,
                            f"msg_{ch.run.id}_{e.id}",
                            delivery.max_attempts,
                            ch.epoch,
                            payload,
                            ch.now,
                        )
                    )
        try:
            c.executemany(
                "INSERT INTO events (run_seq, id, type, attempt, seq, body) VALUES (?, ?, ?, ?, ?, ?)",
                event_rows,
            )
        except sqlite3.IntegrityError:
            raise BadRequest("an event with this (attempt, seq) is already stored") from None
        if delivery_rows:
            c.executemany(
                "INSERT INTO deliveries (run_seq, event_id, webhook_id, max_attempts, "
                "next_attempt_at, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                delivery_rows,
            )
            self._deliveries_pending += len(delivery_rows)

    # -- run reads -------------------------------------------------------------------

    async def get_run(self, run_id: str) -> OpRun:
        """The run with its events and attempts (one consistent snapshot)."""
        return await self._read(self._get_run_detail, run_id)

    def _get_run_detail(self, c: sqlite3.Connection, run_id: str) -> OpRun:
        row = c.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}; list runs with GET /runs")
        run = _run_from_row(row)
        out = to_op_run(run)
        out.events = [
            msgspec.Raw(b)
            for (b,) in c.execute("SELECT body FROM events WHERE run_seq=? ORDER BY id", (run.seq,))
        ]  # type: ignore[assignment]
        out.attempts = self._attempts(c, run)
        return out

    def _attempts(self, c: sqlite3.Connection, run: RunRow) -> list[OpAttempt]:
        rows = c.execute(
            f"SELECT {_ATTEMPT_COLS} FROM attempts WHERE run_seq=? ORDER BY number", (run.seq,)
        )
        return [to_attempt(run.id, _attempt_from_row(r)) for r in rows]

    async def get_attempts(self, run_id: str) -> list[OpAttempt]:
        def q(c: sqlite3.Connection):
            row = c.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise NotFound(f"no run {run_id!r}; list runs with GET /runs")
            return self._attempts(c, _run_from_row(row))

        return await self._read(q)

    async def events_after(
        self, run_id: str, after: int, limit: int | None
    ) -> tuple[list[bytes], bool]:
        """Encoded events with id > after, and whether the run is terminal."""
        return await self._read(self._events_after, run_id, after, limit)

    def _events_after(self, c: sqlite3.Connection, run_id: str, after: int, limit: int | None):
        row = c.execute("SELECT seq, state FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}; list runs with GET /runs")
        sql = "SELECT body FROM events WHERE run_seq=? AND id>? ORDER BY id"
        args: tuple[Any, ...] = (row[0], after)
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        return [b for (b,) in c.execute(sql, args)], S(row[1]).terminal

    async def list_runs(
        self, *, state: OpRunState | None, definition: str | None, limit: int, cursor: int | None
    ) -> RunPage:
        def q(c: sqlite3.Connection) -> RunPage:
            where, args = [], []
            if state is not None:
                where.append("state=?")
                args.append(state.value)
            if definition is not None:
                where.append("definition=?")
                args.append(definition)
            if cursor is not None:
                where.append("seq<?")
                args.append(cursor)
            sql = f"SELECT {_RUN_COLS} FROM runs"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY seq DESC LIMIT ?"
            rows = c.execute(sql, (*args, limit + 1)).fetchall()
            more = len(rows) > limit
            runs = [_run_from_row(r) for r in rows[:limit]]
            return RunPage(
                runs=[to_op_run(r) for r in runs],
                next_cursor=str(runs[-1].seq) if more and runs else None,
            )

        return await self._read(q)

    # -- workers: placement helpers ---------------------------------------------------------

    def _online_workers(self, c: sqlite3.Connection) -> list[scheduler.WorkerShape]:
        if self._online is None:
            self._online = [
                scheduler.WorkerShape(wid, _dec_resources.decode(res), _dec_strs.decode(tags))
                for wid, res, tags in c.execute(
                    "SELECT worker_id, resources, tags FROM workers WHERE status='ONLINE' "
                    "ORDER BY worker_id"
                )
            ]
        return self._online

    def _explain(self, c: sqlite3.Connection, key: bytes, cons: Constraints) -> str | None:
        if key not in self._explained:
            self._explained[key] = scheduler.explain(cons, self._online_workers(c))
        return self._explained[key]

    def _workers_changed(self, c: sqlite3.Connection) -> None:
        """Re-explain every PENDING shape against the new set of ONLINE workers.

        Every PENDING run of a shape carries the cached sentence of that shape
        (the cache is dropped on rollback), so only changed sentences are written.
        """
        before = self._explained
        self._online = None
        self._explained = {}
        shapes = [r[0] for r in c.execute("SELECT DISTINCT constraints FROM runs WHERE state='PENDING'")]
        for key in shapes:
            sentence = self._explain(c, key, _dec_constraints.decode(key))
            if key in before and before[key] == sentence:
                continue
            c.execute(
                "UPDATE runs SET scheduling=? WHERE state='PENDING' AND constraints=? "
                "AND scheduling IS NOT ?",
                (sentence, key, sentence),
            )

    def _reservations(self, c: sqlite3.Connection, worker_id: str) -> list[RunRow]:
        return [
            _run_from_row(r)
            for r in c.execute(f"SELECT {_RUN_COLS} FROM runs WHERE reserved_on=?", (worker_id,))
        ]

    def _lingering(self, c: sqlite3.Connection, worker_id: str | None = None) -> list[LingeringHold]:
        """Lingering holds of one worker (or of all workers)."""
        sql = (
            "SELECT h.worker_id, h.run_seq, r.id, h.attempt, r.constraints, h.gpu_ids "
            "FROM lingering_holds h JOIN runs r ON r.seq = h.run_seq"
        )
        rows = c.execute(sql + " WHERE h.worker_id=?", (worker_id,)) if worker_id else c.execute(sql)
        return [
            LingeringHold(w, seq, rid, att, _dec_constraints.decode(cons), _dec_ints.decode(g))
            for w, seq, rid, att, cons, g in rows
        ]

    @staticmethod
    def _capacity(
        resources: Resources,
        tags: list[str],
        held: Iterable[RunRow],
        lingering: Iterable[LingeringHold] = (),
    ) -> scheduler.Capacity:
        cap = scheduler.Capacity.of(resources, tags)
        for r in held:
            cap.reserve(r.spec.constraints, r.gpu_ids)
        for h in lingering:
            cap.reserve(h.constraints, h.gpu_ids)
        return cap

    def _lose_runs(self, c: sqlite3.Connection, runs: Iterable[RunRow], why: str) -> list[tuple[Change, OpRunState, str | None]]:
        items = []
        runs = list(runs)
        if not runs:
            return items
        attempts = self._current_attempts(c, runs)
        epoch = time.time()
        for run in runs:
            ch = Change(run=run, current=attempts[run.seq], now=iso(epoch), epoch=epoch)
            was, reserved = run.state, run.reserved_on
            statemachine.lose(ch, why)
            items.append((ch, was, reserved))
        self._save(c, [i[0] for i in items])
        return items

    def _current_attempts(self, c: sqlite3.Connection, runs: Sequence[RunRow]) -> dict[int, AttemptRow]:
        found: dict[int, AttemptRow] = {}
        for chunk_start in range(0, len(runs), 400):
            chunk = runs[chunk_start : chunk_start + 400]
            marks = ",".join("(?, ?)" for _ in chunk)
            args = [v for r in chunk for v in (r.seq, r.attempt)]
            for row in c.execute(
                f"SELECT run_seq, {_ATTEMPT_COLS} FROM attempts WHERE (run_seq, number) IN (VALUES {marks})",
                args,
            ):
                found[row[0]] = _attempt_from_row(row[1:])
        return found

    # -- heartbeat ------------------------------------------------------------------------------

    async def heartbeat(self, hb: Heartbeat, interval: float) -> tuple[Worker, WriteEffects]:
        return await self._write(self._heartbeat, hb, interval)

    def _heartbeat(self, c: sqlite3.Connection, hb: Heartbeat, interval: float):
        epoch = time.time()
        now = iso(epoch)
        res = _enc.encode(hb.resources)
        tags = _enc.encode(hb.tags)
        row = c.execute(
            "SELECT resources, tags, status FROM workers WHERE worker_id=?", (hb.worker_id,)
        ).fetchone()
        changed = row is None or (row[0], row[1], row[2]) != (res, tags, "ONLINE")
        c.execute(
            "INSERT INTO workers (worker_id, resources, tags, status, first_seen_at, "
            "last_heartbeat_at, last_seen) VALUES (?, ?, ?, 'ONLINE', ?, ?, ?) "
            "ON CONFLICT (worker_id) DO UPDATE SET resources=excluded.resources, "
            "tags=excluded.tags, status='ONLINE', last_heartbeat_at=excluded.last_heartbeat_at, "
            "last_seen=excluded.last_seen",
            (hb.worker_id, res, tags, now, now, epoch),
        )
        fx = WriteEffects([], changed, set())
        cancel: list[str] = []
        if hb.running_ops is not None:
            reported = {op.run_id: op.attempt for op in hb.running_ops}
            held = self._reservations(c, hb.worker_id)
            lost, released = [], []
            for r in held:
                if r.state in ACTIVE_STATES:
                    if reported.get(r.id) != r.attempt and (r.assigned_epoch or 0) < epoch - interval:
                        lost.append(r)
                elif r.id not in reported:
                    released.append(r.seq)
            if released:
                c.executemany("UPDATE runs SET reserved_on=NULL WHERE seq=?", [(s,) for s in released])
                fx.work_changed = True
            gone = [
                (h.run_seq, h.attempt)
                for h in self._lingering(c, hb.worker_id)
                if reported.get(h.run_id) != h.attempt
            ]
            if gone:
                c.executemany("DELETE FROM lingering_holds WHERE run_seq=? AND attempt=?", gone)
                fx.work_changed = True
            items = self._lose_runs(c, lost, f"worker {hb.worker_id} no longer reports this run")
            if items:
                e = self._effects(items)
                fx.run_ids += e.run_ids
                fx.work_changed = True
            cancel = self._stale_reports(c, hb.worker_id, reported)
        if changed:
            self._workers_changed(c)
        worker = self._worker(c, hb.worker_id)
        worker.cancel = sorted(set(worker.cancel) | set(cancel))
        return worker, fx

    def _stale_reports(self, c: sqlite3.Connection, worker_id: str, reported: dict[str, int]) -> list[str]:
        """Reported runs the server has ended, cancelled or moved to another attempt."""
        if not reported:
            return []
        ids = list(reported)
        known: dict[str, tuple[str, int, str | None]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for rid, state, attempt, wid in c.execute(
                f"SELECT id, state, attempt, worker_id FROM runs WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                known[rid] = (state, attempt, wid)
        stale = []
        for rid, attempt in reported.items():
            k = known.get(rid)
            if k is None or S(k[0]).terminal or k[1] != attempt or k[2] != worker_id:
                stale.append(rid)
        return stale

    def _worker(self, c: sqlite3.Connection, worker_id: str) -> Worker:
        row = c.execute(
            "SELECT worker_id, resources, tags, status, first_seen_at, last_heartbeat_at "
            "FROM workers WHERE worker_id=?",
            (worker_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no worker {worker_id!r}: send POST /workers/heartbeat first")
        return self._worker_from(
            row, self._reservations(c, worker_id), self._lingering(c, worker_id)
        )

    def _worker_from(
        self, row: Sequence[Any], held: list[RunRow], lingering: list[LingeringHold]
    ) -> Worker:
        resources = _dec_resources.decode(row[1])
        tags = _dec_strs.decode(row[2])
        cap = self._capacity(resources, tags, held, lingering)
        return Worker(
            worker_id=row[0],
            resources=resources,
            tags=tags,
            running_ops=[self._worker_op(r, resources) for r in held if r.state in ACTIVE_STATES],
            status=row[3],
            free=FreeResources(
                cpu_cores=max(cap.cpu_milli, 0) / 1000,
                ram_mb=max(cap.ram_mb, 0),
                gpu_ids=sorted(cap.gpus),
            ),
            first_seen_at=row[4],
            last_heartbeat_at=row[5],
            cancel=sorted({r.id for r in held if r.state.terminal} | {h.run_id for h in lingering}),
        )

    @staticmethod
    def _worker_op(r: RunRow, resources: Resources) -> WorkerOpRun:
        uuids = {g.id: g.uuid for g in resources.gpus}
        s = r.spec
        return WorkerOpRun(
            run_id=r.id,
            attempt=r.attempt,
            image=s.image,
            command=s.command,
            env=s.env,
            inputs=s.inputs,
            constraints=s.constraints,
            gpu_ids=r.gpu_ids,
            gpu_uuids=[uuids.get(g) for g in r.gpu_ids],
            timeout_s=s.timeout_s,
            state=r.state,
        )

    async def list_workers(self) -> list[Worker]:
        def q(c: sqlite3.Connection) -> list[Worker]:
            held: dict[str, list[RunRow]] = {}
            for r in c.execute(f"SELECT {_RUN_COLS} FROM runs WHERE reserved_on IS NOT NULL"):
                run = _run_from_row(r)
                held.setdefault(run.reserved_on, []).append(run)  # type: ignore[arg-type]
            lingering: dict[str, list[LingeringHold]] = {}
            for h in self._lingering(c):
                lingering.setdefault(h.worker_id, []).append(h)
            rows = c.execute(
                "SELECT worker_id, resources, tags, status, first_seen_at, last_heartbeat_at "
                "FROM workers ORDER BY worker_id"
            ).fetchall()
            return [
                self._worker_from(row, held.get(row[0], []), lingering.get(row[0], []))
                for row in rows
            ]

        return await self._read(q)

    # -- claim ------------------------------------------------------------------------------------

    async def claim(self, worker_id: str, max_ops: int | None) -> tuple[ClaimOutcome, WriteEffects]:
        return await self._write(self._claim, worker_id, max_ops)

    def _claim(self, c: sqlite3.Connection, worker_id: str, max_ops: int | None):
        epoch = time.time()
        now = iso(epoch)
        row = c.execute(
            "SELECT worker_id, resources, tags, status FROM workers WHERE worker_id=?", (worker_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no worker {worker_id!r}: send POST /workers/heartbeat first")
        c.execute("UPDATE workers SET last_seen=?, status='ONLINE' WHERE worker_id=?", (epoch, worker_id))
        fx = WriteEffects([], False, set())
        if row[3] != "ONLINE":
            self._workers_changed(c)
            fx.work_changed = True
        resources = _dec_resources.decode(row[1])
        tags = _dec_strs.decode(row[2])
        held = self._reservations(c, worker_id)
        lingering = self._lingering(c, worker_id)
        cap = self._capacity(resources, tags, held, lingering)
        cancel = sorted({r.id for r in held if r.state.terminal} | {h.run_id for h in lingering})
        chosen: dict[int, list[int]] = {}
        if max_ops is None or max_ops > 0:
            chosen = self._choose(c, cap, epoch, max_ops)
        ops: list[WorkerOpRun] = []
        if chosen:
            runs = [
                _run_from_row(r)
                for r in c.execute(
                    f"SELECT {_RUN_COLS} FROM runs WHERE seq IN ({','.join('?' * len(chosen))})",
                    list(chosen),
                )
            ]
            runs.sort(key=lambda r: (-r.priority, r.seq))
            attempts = self._current_attempts(c, runs)
            changes = []
            for run in runs:
                ch = Change(run=run, current=attempts[run.seq], now=now, epoch=epoch)
                run.state = S.ASSIGNED
                run.worker_id = worker_id
                run.gpu_ids = chosen[run.seq]
                run.reserved_on = worker_id
                run.assigned_epoch = epoch
                att = ch.attempt_row()
                att.state, att.worker_id, att.gpu_ids, att.assigned_at = (
                    S.ASSIGNED,
                    worker_id,
                    run.gpu_ids,
                    now,
                )
                ch.emit(EventType.ASSIGNED, f"claimed by worker {worker_id}")
                changes.append(ch)
                ops.append(self._worker_op(run, resources))
            self._save(c, changes)
            fx.run_ids = [r.id for r in runs]
        nxt = c.execute(
            # INDEXED BY: left to itself the planner walks runs_by_state, every PENDING row.
            "SELECT min(not_before) FROM runs INDEXED BY runs_backoff "
            "WHERE state='PENDING' AND not_before > ?",
            (epoch,),
        ).fetchone()[0]
        return ClaimOutcome(ClaimResult(ops=ops, cancel=cancel), nxt), fx

    def _choose(
        self, c: sqlite3.Connection, cap: scheduler.Capacity, epoch: float, max_ops: int | None
    ) -> dict[int, list[int]]:
        """Walk the queue in priority-then-age order, taking every run that fits.

        The SQL filter drops runs too large for the free CPU/RAM/GPU count
        inside SQLite, so a deep queue of unfittable runs stays cheap; a run
        that does not fit never blocks smaller runs behind it.
        """
        chosen: dict[int, list[int]] = {}
        refused: set[bytes] = set()
        rows = c.execute(
            "SELECT seq, constraints FROM runs INDEXED BY runs_queue WHERE state='PENDING' "
            "AND not_before <= ? AND cpu_milli <= ? AND ram_mb <= ? AND gpus <= ? "
            "ORDER BY priority DESC, seq",
            (epoch, cap.cpu_milli, cap.ram_mb, len(cap.gpus)),
        )
        for seq, key in rows:
            if key in refused:
                continue
            cons = _dec_constraints.decode(key)
            gpu_ids = cap.place(cons)
            if gpu_ids is None:
                refused.add(key)
                continue
            cap.reserve(cons, gpu_ids)
            chosen[seq] = gpu_ids
            if max_ops is not None and len(chosen) >= max_ops:
                break
        return chosen

    # -- liveness -----------------------------------------------------------------------------------

    async def expire_workers(
        self, timeout: float, alive: Iterable[str] = ()
    ) -> tuple[list[str], WriteEffects]:
        """Mark workers silent for ``timeout`` OFFLINE and lose their runs.

        ``alive``: workers with a claim open right now (a long-poll claim is
        a sign of life for as long as it waits); their clock is refreshed.
        """
        return await self._write(self._expire_workers, timeout, sorted(alive))

    def _expire_workers(self, c: sqlite3.Connection, timeout: float, alive: Sequence[str] = ()):
        epoch = time.time()
        if alive:
            c.execute(
                f"UPDATE workers SET last_seen=? WHERE worker_id IN ({','.join('?' * len(alive))}) "
                "AND status='ONLINE'",
                (epoch, *alive),
            )
        gone = [
            w
            for (w,) in c.execute(
                "SELECT worker_id FROM workers WHERE status='ONLINE' AND last_seen < ?",
                (epoch - timeout,),
            )
        ]
        fx = WriteEffects([], False, set())
        for wid in gone:
            c.execute("UPDATE workers SET status='OFFLINE' WHERE worker_id=?", (wid,))
            held = self._reservations(c, wid)
            items = self._lose_runs(
                c,
                [r for r in held if r.state in ACTIVE_STATES],
                f"worker {wid} stopped heartbeating (OFFLINE)",
            )
            c.execute("UPDATE runs SET reserved_on=NULL WHERE reserved_on=?", (wid,))
            c.execute("DELETE FROM lingering_holds WHERE worker_id=?", (wid,))
            fx.run_ids += [ch.run.id for ch, _, _ in items]
        if gone:
            self._workers_changed(c)
            fx.work_changed = True
        return gone, fx

    # -- deliveries ------------------------------------------------------------------------------------

    async def due_deliveries(self, limit: int, busy_runs: Iterable[str] = ()) -> list[DeliveryJob]:
        """The oldest PENDING delivery of each run whose time has come.

        Per run, only the first PENDING delivery is eligible, so event n+1
        waits for event n to be delivered or to fail for good.
        """
        busy = set(busy_runs)

        def q(c: sqlite3.Connection) -> list[DeliveryJob]:
            rows = c.execute(
                _PENDING_HEADS + "SELECT d.id, r.id, d.event_id, d.webhook_id, d.attempts, "
                "d.max_attempts, d.body, r.spec, d.next_attempt_at FROM heads h "
                "JOIN deliveries d ON d.id = h.id JOIN runs r ON r.seq = d.run_seq "
                "WHERE d.next_attempt_at <= ? ORDER BY d.next_attempt_at LIMIT ?",
                (time.time(), limit + len(busy)),
            ).fetchall()
            jobs = []
            for did, rid, eid, wid, attempts, max_attempts, body, spec, _ in rows:
                if rid in busy:
                    continue
                delivery = _dec_spec.decode(spec).event_delivery
                if delivery is None:
                    continue
                jobs.append(
                    DeliveryJob(did, rid, eid, wid, attempts, max_attempts, body,
                                delivery.url, delivery.secret, dict(delivery.headers))
                )
            return jobs[:limit]

        return await self._read(q)

    async def next_delivery_at(self, busy_runs: Iterable[str] = ()) -> float | None:
        """When the next delivery becomes eligible: the earliest ``next_attempt_at``
        among the head of each run's queue, runs in ``busy_runs`` left out (rows
        queued behind a head are not eligible, whatever their own time)."""
        busy = sorted(set(busy_runs))
        skip = f" WHERE r.id NOT IN ({','.join('?' * len(busy))})" if busy else ""
        return await self._read(
            lambda c: c.execute(
                _PENDING_HEADS + "SELECT min(d.next_attempt_at) FROM heads h "
                "JOIN deliveries d ON d.id = h.id JOIN runs r ON r.seq = d.run_seq" + skip,
                busy,
            ).fetchone()[0]
        )

    async def record_delivery(
        self,
        delivery_id: int,
        *,
        delivered: bool,
        give_up: bool,
        status_code: int | None,
        error: str | None,
        next_attempt_at: float | None,
    ) -> None:
        """Record one delivery attempt's outcome."""

        def w(c: sqlite3.Connection) -> None:
            now = iso(time.time())
            status = "DELIVERED" if delivered else ("FAILED" if give_up else "PENDING")
            c.execute(
                "UPDATE deliveries SET attempts = attempts + 1, status=?, last_status_code=?, "
                "last_error=?, next_attempt_at=coalesce(?, next_attempt_at), "
                "delivered_at=CASE WHEN ? THEN ? ELSE delivered_at END WHERE id=?",
                (status, status_code, error, next_attempt_at, delivered, now, delivery_id),
            )

        await self._write(w)

    async def list_deliveries(self, run_id: str) -> list[Delivery]:
        def q(c: sqlite3.Connection) -> list[Delivery]:
            row = c.execute("SELECT seq FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise NotFound(f"no run {run_id!r}; list runs with GET /runs")
            rows = c.execute(
                "SELECT d.id, d.event_id, e.type, d.webhook_id, d.status, d.attempts, d.max_attempts, "
                "d.last_status_code, d.last_error, d.next_attempt_at, d.created_at, d.delivered_at "
                "FROM deliveries d JOIN events e ON e.run_seq = d.run_seq AND e.id = d.event_id "
                "WHERE d.run_seq=? ORDER BY d.event_id",
                (row[0],),
            )
            return [
                Delivery(
                    id=r[0],
                    event_id=r[1],
                    event_type=EventType(r[2]),
                    webhook_id=r[3],
                    status=r[4],
                    attempts=r[5],
                    max_attempts=r[6],
                    last_status_code=r[7],
                    last_error=r[8],
                    next_attempt_at=iso(r[9]) if r[4] == "PENDING" else None,
                    created_at=r[10],
                    delivered_at=r[11],
                )
                for r in rows
            ]

        return await self._read(q)

    async def redeliver(self, run_id: str, delivery_id: int) -> None:
        def w(c: sqlite3.Connection) -> None:
            row = c.execute(
                "SELECT d.status FROM deliveries d JOIN runs r ON r.seq = d.run_seq "
                "WHERE r.id=? AND d.id=?",
                (run_id, delivery_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"no delivery {delivery_id} on run {run_id!r}")
            if row[0] != "FAILED":
                raise BadRequest(f"delivery {delivery_id} is {row[0]}; only FAILED deliveries can be redelivered")
            c.execute(
                "UPDATE deliveries SET status='PENDING', attempts=0, next_attempt_at=? WHERE id=?",
                (time.time(), delivery_id),
            )

        await self._write(w)
