"""The run state machine of SPEC §2, as pure functions over in-memory rows.

The store loads a run and its current attempt into a ``Change``, calls one
of these functions, and writes back what the change holds (the run, the
touched attempts, the new events) in the same transaction. Nothing here
knows SQL, so every backend shares the same rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .errors import BadRequest, Conflict, Locked
from .models import (
    MAX_MSG_BYTES,
    SERVER_ONLY_EVENTS,
    Constraints,
    EventDelivery,
    EventIn,
    EventType,
    OpRunState,
    RetryPolicy,
    RunPatch,
)

S = OpRunState
E = EventType


class RunSpec(msgspec.Struct, kw_only=True):
    """What a run executes; fixed at creation."""

    image: str
    command: list[str] | None = None
    env: dict[str, str] = {}
    inputs: dict[str, Any] = {}
    constraints: Constraints = msgspec.field(default_factory=Constraints)
    retry_policy: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    event_delivery: EventDelivery | None = None
    timeout_s: float | None = None


@dataclass
class AttemptRow:
    number: int
    state: OpRunState
    created_at: str
    worker_id: str | None = None
    gpu_ids: list[int] = field(default_factory=list)
    reason: str | None = None
    exit_code: int | None = None
    error: str | None = None
    assigned_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


@dataclass
class RunRow:
    seq: int
    id: str
    definition: str | None
    version: str | None
    spec: RunSpec
    state: OpRunState
    priority: int
    attempt: int
    created_at: str
    updated_at: str
    worker_id: str | None = None
    gpu_ids: list[int] = field(default_factory=list)
    error: str | None = None
    scheduling: str | None = None
    outputs: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    not_before: float = 0.0
    reserved_on: str | None = None
    assigned_epoch: float | None = None
    last_event_id: int = 0


@dataclass
class NewEvent:
    id: int
    type: EventType
    msg: str | int | float
    state: OpRunState
    attempt: int
    payload: dict[str, Any] | None
    seq: int | None
    t: str


@dataclass
class Change:
    """One run's change within a transaction, and what it produced."""

    run: RunRow
    current: AttemptRow | None
    now: str
    epoch: float
    events: list[NewEvent] = field(default_factory=list)
    attempts: list[AttemptRow] = field(default_factory=list)
    requeued: bool = False
    released: bool = False
    # (worker_id, attempt, gpu_ids) of a hold that outlives the run's own
    # reservation: a retried run whose old container may still be stopping.
    lingering: tuple[str, int, list[int]] | None = None

    def emit(
        self,
        type_: EventType,
        msg: str | int | float = "",
        payload: dict[str, Any] | None = None,
        seq: int | None = None,
        attempt: int | None = None,
    ) -> None:
        run = self.run
        run.last_event_id += 1
        self.events.append(
            NewEvent(
                id=run.last_event_id,
                type=type_,
                msg=msg,
                state=run.state,
                attempt=attempt if attempt is not None else run.attempt,
                payload=payload,
                seq=seq,
                t=self.now,
            )
        )
        run.updated_at = self.now

    def attempt_row(self) -> AttemptRow:
        if self.current is None:
            raise RuntimeError("the current attempt was not loaded")
        if self.current not in self.attempts:
            self.attempts.append(self.current)
        return self.current

    def release(self) -> None:
        if self.run.reserved_on is not None:
            self.run.reserved_on = None
            self.released = True


def new_attempt(number: int, now: str) -> AttemptRow:
    return AttemptRow(number=number, state=S.PENDING, created_at=now)


# -- events -------------------------------------------------------------------------


def normalise_msg(type_: EventType, msg: str | int | float) -> str | int | float:
    if type_ is E.PROGRESS:
        if isinstance(msg, str):
            try:
                msg = float(msg)
            except ValueError:
                raise BadRequest("msg: PROGRESS needs a number from 0 to 100") from None
        if isinstance(msg, bool) or not math.isfinite(msg) or not 0 <= msg <= 100:
            raise BadRequest(f"msg: PROGRESS needs a number from 0 to 100, got {msg!r}")
        return int(msg) if float(msg).is_integer() else msg
    if not isinstance(msg, str):
        msg = str(msg)
    if len(msg.encode("utf-8", "surrogatepass")) > MAX_MSG_BYTES:
        raise BadRequest(f"msg: at most {MAX_MSG_BYTES} bytes; split long output into several LOG events")
    return msg


def check_fence(ch: Change, attempt: int | None) -> None:
    if attempt is not None and attempt != ch.run.attempt:
        raise Conflict(
            f"attempt {attempt} is stale: run {ch.run.id} is on attempt {ch.run.attempt}"
        )


def check_open(ch: Change, what: str) -> None:
    if ch.run.state.terminal:
        raise Locked(f"run {ch.run.id} is {ch.run.state.value} and locked: it accepts no {what}")


def apply_event(ch: Change, ev: EventIn) -> None:
    """Apply a client or worker event to the run (SPEC §2 table)."""
    if ev.type in SERVER_ONLY_EVENTS:
        raise BadRequest(f"type: {ev.type.value} events are written by the server only")
    check_fence(ch, ev.attempt)
    check_open(ch, "event")
    msg = normalise_msg(ev.type, ev.msg)
    run = ch.run
    if run.state is S.PENDING and ev.type is not E.CANCELLED:
        raise BadRequest(
            f"run {run.id} is PENDING (not claimed by a worker yet); only CANCELLED is accepted"
        )
    if ev.type is E.STARTED:
        if run.state is not S.ASSIGNED:
            raise BadRequest(f"run {run.id} is already RUNNING; STARTED is accepted once, from ASSIGNED")
        run.state = S.RUNNING
        run.started_at = ch.now
        att = ch.attempt_row()
        att.state, att.started_at = S.RUNNING, ch.now
        ch.emit(E.STARTED, msg, ev.payload, ev.seq)
    elif ev.type in (E.PROGRESS, E.LOG):
        ch.emit(ev.type, msg, ev.payload, ev.seq)
    elif ev.type is E.COMPLETED:
        outputs = (ev.payload or {}).get("outputs")
        if outputs is not None and not isinstance(outputs, dict):
            raise BadRequest("payload.outputs must be a JSON object")
        complete(ch, outputs)
        ch.release()
        ch.emit(E.COMPLETED, msg, ev.payload, ev.seq)
    elif ev.type is E.FAILED:
        fail_from_worker(ch, msg, ev.payload, ev.seq)
    elif ev.type is E.CANCELLED:
        cancel(ch, msg, ev.payload, ev.seq)


def complete(ch: Change, outputs: dict[str, Any] | None) -> None:
    run = ch.run
    if outputs is not None:
        run.outputs = {**(run.outputs or {}), **outputs}
    run.state = S.COMPLETED
    run.finished_at = ch.now
    run.error = None  # earlier attempts' errors stay in the attempt history
    att = ch.attempt_row()
    att.state, att.finished_at = S.COMPLETED, ch.now


def cancel(ch: Change, msg: str | int | float = "", payload=None, seq=None) -> None:
    """Cancel keeps the worker's reservation until it stops reporting the run."""
    run = ch.run
    run.state = S.CANCELLED
    run.finished_at = ch.now
    att = ch.attempt_row()
    att.state, att.reason, att.finished_at = S.CANCELLED, "CANCELLED", ch.now
    ch.emit(E.CANCELLED, msg, payload, seq)


def _failure_details(payload: dict[str, Any] | None) -> tuple[str, int | None, str | None]:
    p = payload or {}
    reason = p.get("reason", "FAILED")
    if reason not in ("FAILED", "TIMEOUT"):
        raise BadRequest('payload.reason must be "FAILED" or "TIMEOUT"')
    exit_code = p.get("exit_code")
    if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
        raise BadRequest("payload.exit_code must be an integer")
    if exit_code is not None and not -(2**63) <= exit_code < 2**63:
        raise BadRequest("payload.exit_code is out of range")
    error = p.get("error_message")
    if error is not None and not isinstance(error, str):
        raise BadRequest("payload.error_message must be a string")
    return reason, exit_code, error


def fail_from_worker(ch: Change, msg, payload, seq) -> None:
    """A FAILED event: the retry rule decides between requeue and FAILED."""
    reason, exit_code, error = _failure_details(payload)
    end_attempt(ch, reason, exit_code, error or (msg if isinstance(msg, str) and msg else None))
    ch.release()
    _retry_or_fail(ch, reason, E.FAILED, msg, payload, seq)


def lose(ch: Change, why: str) -> None:
    """The run's worker vanished or stopped reporting it."""
    end_attempt(ch, "LOST", None, why)
    ch.release()
    _retry_or_fail(ch, "LOST", E.LOST, why, None, None)


def end_attempt(ch: Change, reason: str, exit_code: int | None, error: str | None) -> None:
    att = ch.attempt_row()
    att.state, att.reason, att.finished_at = S.FAILED, reason, ch.now
    att.exit_code, att.error = exit_code, error
    ch.run.error = error or f"attempt {att.number} ended: {reason}"


def _retry_or_fail(ch: Change, reason: str, type_: EventType, msg, payload, seq) -> None:
    run = ch.run
    policy = run.spec.retry_policy
    if reason in policy.retry_on and run.attempt < policy.max_attempts:
        old = run.attempt
        run.state = S.PENDING
        ch.emit(type_, msg, payload, seq, attempt=old)
        requeue(ch, delay=policy.delay_before(old + 1), why=f"{reason.lower()} on attempt {old}")
        return
    run.state = S.FAILED
    run.finished_at = ch.now
    ch.emit(type_, msg, payload, seq)


def requeue(ch: Change, *, delay: float, why: str) -> None:
    """Back to PENDING as a new attempt: RETRYING then QUEUED."""
    run = ch.run
    run.state = S.PENDING
    run.attempt += 1
    run.worker_id = None
    run.gpu_ids = []
    run.assigned_epoch = None
    run.started_at = None
    run.finished_at = None
    run.not_before = ch.epoch + delay
    ch.current = new_attempt(run.attempt, ch.now)
    ch.attempts.append(ch.current)
    ch.requeued = True
    ch.emit(E.RETRYING, f"attempt {run.attempt} after {why}" + (f", in {delay:g}s" if delay else ""))
    ch.emit(E.QUEUED, f"attempt {run.attempt} queued")


# -- PATCH and retry ---------------------------------------------------------------


def apply_patch(ch: Change, patch: RunPatch) -> None:
    run = ch.run
    if patch.state in (S.PENDING, S.ASSIGNED):
        raise BadRequest(f"state: {patch.state.value} cannot be set by PATCH (use POST /runs/{{id}}/retry)")
    if patch.state is None and patch.outputs is None and patch.priority is None:
        raise BadRequest("send at least one of state, outputs, priority")
    if run.state.terminal:
        raise Locked(f"run {run.id} is {run.state.value} and locked: PATCH changes nothing")
    if patch.priority is not None:
        run.priority = patch.priority
        run.updated_at = ch.now
    if patch.state is S.COMPLETED:
        if run.state is S.PENDING:
            raise BadRequest(f"run {run.id} is PENDING; only CANCELLED is accepted")
        complete(ch, patch.outputs)
        # Set by a user, not the worker: like a cancel, the worker keeps its
        # reservation until it stops reporting the run (it learns via cancel).
        ch.emit(E.COMPLETED)
        return
    if patch.outputs is not None:
        run.outputs = {**(run.outputs or {}), **patch.outputs}
        run.updated_at = ch.now
    if patch.state is None:
        return
    if patch.state is S.RUNNING:
        apply_event(ch, EventIn(type=E.STARTED))
    elif patch.state is S.CANCELLED:
        cancel(ch)
    elif patch.state is S.FAILED:
        if run.state is S.PENDING:
            raise BadRequest(f"run {run.id} is PENDING; only CANCELLED is accepted")
        # PATCH to FAILED is final: no automatic retry. The worker (if any)
        # keeps its reservation until it stops reporting the run.
        end_attempt(ch, "FAILED", None, "set to FAILED by PATCH")
        run.state = S.FAILED
        run.finished_at = ch.now
        ch.emit(E.FAILED, "set to FAILED by PATCH")


def manual_retry(ch: Change) -> None:
    run = ch.run
    if run.state not in (S.FAILED, S.CANCELLED):
        raise BadRequest(f"run {run.id} is {run.state.value}; only FAILED or CANCELLED runs can be retried")
    limit = run.spec.retry_policy.max_attempts
    if run.attempt >= limit:
        raise BadRequest(
            f"run {run.id} has used {run.attempt} of retry_policy.max_attempts={limit}; "
            "create a new run instead"
        )
    # The old worker may still be stopping that container: its resources stay
    # counted on the worker (a lingering hold) until it stops reporting the
    # attempt or goes OFFLINE, while the new attempt is claimable at once.
    if run.reserved_on is not None:
        ch.lingering = (run.reserved_on, run.attempt, list(run.gpu_ids))
    ch.release()
    requeue(ch, delay=0.0, why="manual retry")

