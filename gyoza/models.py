"""The objects of the gyoza API, as msgspec Structs.

Request bodies are decoded straight into these types, so their bounds *are*
the validation: a wrong type, an out-of-range value or an unknown field turns
into a 400 whose detail names the field (see ``gyoza.errors.decode``).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

# -- shared scalar types ----------------------------------------------------

Name = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$")]
Version = Annotated[str, Meta(pattern=r"^[\x21-\x2e\x30-\x7e]{1,64}$")]
Image = Annotated[str, Meta(min_length=1, max_length=512, pattern=r"^[^\s\x00-\x1f\x7f]+$")]
Tag = Annotated[str, Meta(min_length=1, max_length=128)]
WorkerId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")]
Priority = Annotated[int, Meta(ge=0, le=100)]
Timeout = Annotated[float, Meta(gt=0, le=31_536_000)]
# A container's environment cannot hold NUL, nor a name with "=".
EnvMap = dict[
    Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[^=\x00]+$")],
    Annotated[str, Meta(max_length=65_536, pattern=r"^[^\x00]*$")],
]
Command = list[Annotated[str, Meta(max_length=65_536)]]

MAX_MSG_BYTES = 64 * 1024


class OpRunState(enum.StrEnum):
    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({OpRunState.COMPLETED, OpRunState.FAILED, OpRunState.CANCELLED})
ACTIVE_STATES = frozenset({OpRunState.ASSIGNED, OpRunState.RUNNING})


class EventType(enum.StrEnum):
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    LOG = "LOG"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"
    LOST = "LOST"
    RETRYING = "RETRYING"


SERVER_ONLY_EVENTS = frozenset(
    {EventType.QUEUED, EventType.ASSIGNED, EventType.LOST, EventType.RETRYING}
)

RetryReason = Literal["FAILED", "LOST", "TIMEOUT"]
AttemptReason = Literal["FAILED", "LOST", "TIMEOUT", "CANCELLED"]


class Model(Struct, forbid_unknown_fields=True):
    """Base for API objects: unknown fields are refused, never dropped."""

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return msgspec.convert(data, cls)


# -- definition parts ---------------------------------------------------------


class Constraints(Model, kw_only=True):
    """What one attempt reserves on a worker (and the container's limits)."""

    cpu_cores: Annotated[float, Meta(ge=0, le=4096)] = 1.0
    ram_mb: Annotated[int, Meta(ge=0, le=1 << 32)] = 256
    gpus: Annotated[int, Meta(ge=0, le=256)] = 0
    vram_mb: Annotated[int, Meta(ge=0, le=1 << 32)] = 0
    gpu_tags: Annotated[list[Tag], Meta(max_length=64)] = []
    tags: Annotated[list[Tag], Meta(max_length=64)] = []

    def __post_init__(self) -> None:
        if self.gpus == 0 and self.vram_mb > 0:
            raise ValueError("vram_mb needs gpus >= 1 (it is the VRAM each GPU must have)")
        if self.gpus == 0 and self.gpu_tags:
            raise ValueError("gpu_tags needs gpus >= 1")

    @property
    def cpu_milli(self) -> int:
        """CPU in millicores: integer sums never drift."""
        return round(self.cpu_cores * 1000)


class RetryPolicy(Model, kw_only=True):
    max_attempts: Annotated[int, Meta(ge=1, le=1000)] = 3
    retry_on: Annotated[list[RetryReason], Meta(max_length=3)] = msgspec.field(default_factory=lambda: ["LOST"])
    backoff_s: Annotated[float, Meta(ge=0, le=86_400)] = 5.0
    backoff_factor: Annotated[float, Meta(ge=1, le=100)] = 2.0
    max_backoff_s: Annotated[float, Meta(ge=0, le=86_400)] = 600.0

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before automatic attempt number ``attempt`` (>= 2)."""
        exponent = max(attempt - 2, 0)
        try:
            delay = self.backoff_s * self.backoff_factor**exponent
        except OverflowError:
            delay = self.max_backoff_s
        return min(delay, self.max_backoff_s)


class EventDelivery(Model, kw_only=True):
    """Webhook target for a run's events. ``secret`` is write-only."""

    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    events: list[EventType] | None = None
    secret: Annotated[str, Meta(min_length=1, max_length=1024)] | None = None
    headers: dict[
        Annotated[str, Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")],
        Annotated[str, Meta(max_length=4096, pattern=r"^[^\r\n\x00]*$")],
    ] = {}
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 8

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("url must be an absolute http:// or https:// URL")

    def __repr__(self) -> str:
        # Never show the secret, wherever this object ends up (logs, tracebacks).
        secret = None if self.secret is None else "***"
        return (f"EventDelivery(url={self.url!r}, events={self.events!r}, secret={secret}, "
                f"headers={sorted(self.headers)!r}, max_attempts={self.max_attempts})")

    def wants(self, event_type: EventType) -> bool:
        if self.events is None:
            return event_type is not EventType.LOG
        return event_type in self.events


class EventDeliveryOut(Struct, kw_only=True):
    """EventDelivery as the API shows it: the secret never leaves the server."""

    url: str
    events: list[EventType] | None = None
    headers: dict[str, str] = {}
    max_attempts: int = 8


def public_delivery(d: EventDelivery | None) -> EventDeliveryOut | None:
    if d is None:
        return None
    return EventDeliveryOut(url=d.url, events=d.events, headers=d.headers, max_attempts=d.max_attempts)


class OpDefinition(Model, kw_only=True):
    """A versioned, reusable op."""

    name: Name
    version: Version
    image: Image
    description: Annotated[str, Meta(max_length=65_536)] = ""
    command: Command | None = None
    env: EnvMap = {}
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    constraints: Constraints = msgspec.field(default_factory=Constraints)
    retry_policy: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    event_delivery: EventDelivery | None = None
    timeout_s: Timeout | None = None
    # Server-set; accepted so that a fetched definition can be re-sent.
    created_at: str | None = None
    updated_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = msgspec.to_builtins(self)
        for key in ("created_at", "updated_at"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class OpDefinitionOut(Struct, kw_only=True):
    name: str
    version: str
    image: str
    description: str
    command: list[str] | None
    env: dict[str, str]
    input_schema: dict[str, Any] | None
    output_schema: dict[str, Any] | None
    constraints: Constraints
    retry_policy: RetryPolicy
    event_delivery: EventDeliveryOut | None
    timeout_s: float | None
    created_at: str
    updated_at: str


# -- requests -------------------------------------------------------------------


class RunCreate(Model, kw_only=True):
    """Body of ``POST /runs``: an ad-hoc run without a definition.

    The trailing fields are those of a fetched OpRun that the server sets
    itself; they are accepted and ignored so a fetched run can be re-sent.
    """

    image: Image
    inputs: dict[str, Any] = {}
    priority: Priority = 5
    constraints: Constraints | None = None
    retry_policy: RetryPolicy | None = None
    event_delivery: EventDelivery | None = None
    command: Command | None = None
    env: EnvMap = {}
    timeout_s: Timeout | None = None
    id: Any = None
    definition: Any = None
    version: Any = None
    outputs: Any = None
    state: Any = None
    attempt: Any = None
    worker_id: Any = None
    gpu_ids: Any = None
    error: Any = None
    scheduling: Any = None
    created_at: Any = None
    updated_at: Any = None
    started_at: Any = None
    finished_at: Any = None
    events: Any = None
    attempts: Any = None


class RunFromDefinition(Model, kw_only=True):
    """Body of ``POST /definitions/{name}/runs``."""

    inputs: dict[str, Any] = {}
    priority: Priority = 5
    event_delivery: EventDelivery | None = None  # overrides the definition's


class RunPatch(Model, kw_only=True):
    """Body of ``PATCH /runs/{id}``."""

    state: OpRunState | None = None
    outputs: dict[str, Any] | None = None
    priority: Priority | None = None


class EventIn(Model, kw_only=True):
    """Body of ``POST /runs/{id}/events``."""

    type: EventType
    msg: str | int | float = ""
    payload: dict[str, Any] | None = None
    attempt: Annotated[int, Meta(ge=1, le=(1 << 31))] | None = None
    seq: Annotated[int, Meta(ge=0, le=(1 << 62))] | None = None


class Gpu(Model, kw_only=True):
    id: Annotated[int, Meta(ge=0, le=1023)]
    vram_mb: Annotated[int, Meta(ge=0, le=1 << 32)] = 0
    tags: Annotated[list[Tag], Meta(max_length=64)] = []
    name: Annotated[str, Meta(max_length=256)] | None = None
    uuid: Annotated[str, Meta(max_length=256)] | None = None


class Resources(Model, kw_only=True):
    cpu_cores: Annotated[float, Meta(ge=0, le=4096)]
    ram_mb: Annotated[int, Meta(ge=0, le=1 << 40)]
    gpus: Annotated[list[Gpu], Meta(max_length=256)] = []

    def __post_init__(self) -> None:
        ids = [g.id for g in self.gpus]
        if len(ids) != len(set(ids)):
            raise ValueError("gpu ids must be distinct")

    @property
    def cpu_milli(self) -> int:
        return round(self.cpu_cores * 1000)


class RunningOp(Model, kw_only=True):
    """An op a worker reports as running; only run_id and attempt matter."""

    run_id: Annotated[str, Meta(min_length=1, max_length=128)]
    attempt: Annotated[int, Meta(ge=1, le=(1 << 31))]
    image: Any = None
    command: Any = None
    env: Any = None
    inputs: Any = None
    constraints: Any = None
    gpu_ids: Any = None
    timeout_s: Any = None
    state: Any = None


class Heartbeat(Model, kw_only=True):
    worker_id: WorkerId
    resources: Resources
    tags: Annotated[list[Tag], Meta(max_length=64)] = []
    running_ops: Annotated[list[RunningOp], Meta(max_length=10_000)] | None = None


# -- responses ----------------------------------------------------------------


class Event(Struct, kw_only=True):
    id: int
    type: EventType
    t: str
    msg: str | int | float
    state: OpRunState
    attempt: int
    payload: dict[str, Any] | None = None
    seq: int | None = None


class OpAttempt(Struct, kw_only=True):
    run_id: str
    number: int
    state: OpRunState
    worker_id: str | None = None
    gpu_ids: list[int] = []
    reason: AttemptReason | None = None
    exit_code: int | None = None
    error: str | None = None
    created_at: str
    assigned_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


class OpRun(Struct, kw_only=True):
    id: str
    definition: str | None
    version: str | None
    image: str
    command: list[str] | None
    env: dict[str, str]
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    priority: int
    constraints: Constraints
    retry_policy: RetryPolicy
    event_delivery: EventDeliveryOut | None
    timeout_s: float | None
    state: OpRunState
    attempt: int
    worker_id: str | None
    gpu_ids: list[int]
    error: str | None
    scheduling: str | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    events: list[Event] | UnsetType = UNSET
    attempts: list[OpAttempt] | UnsetType = UNSET


class RunPage(Struct):
    runs: list[OpRun]
    next_cursor: str | None


class EventPage(Struct):
    events: list[Event]


class WorkerOpRun(Struct, kw_only=True):
    run_id: str
    attempt: int
    image: str
    command: list[str] | None
    env: dict[str, str]
    inputs: dict[str, Any]
    constraints: Constraints
    gpu_ids: list[int]
    gpu_uuids: list[str | None] = []
    timeout_s: float | None
    state: OpRunState


class FreeResources(Struct, kw_only=True):
    cpu_cores: float
    ram_mb: int
    gpu_ids: list[int]


class Worker(Struct, kw_only=True):
    worker_id: str
    resources: Resources
    tags: list[str]
    running_ops: list[WorkerOpRun]
    status: Literal["ONLINE", "OFFLINE"]
    free: FreeResources
    first_seen_at: str
    last_heartbeat_at: str
    cancel: list[str]


class ClaimResult(Struct):
    ops: list[WorkerOpRun]
    cancel: list[str]


class Health(Struct):
    status: str


class ErrorBody(Struct):
    error: str
    detail: str


class Delivery(Struct, kw_only=True, forbid_unknown_fields=True):
    """One webhook delivery of a run's event (``GET /runs/{id}/deliveries``)."""

    id: int
    event_id: int
    event_type: EventType
    webhook_id: str
    status: Literal["PENDING", "DELIVERED", "FAILED"]
    attempts: int
    max_attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: str | None  # only while PENDING
    created_at: str
    delivered_at: str | None
