"""The OpenAPI 3.1 document of the gyoza API, generated from the app itself.

Schemas come from the msgspec Structs the server decodes requests with and
encodes answers from (``msgspec.json.schema_components``), so there is no
hand-kept copy of any object. The paths come from the app's routes: every
``Route`` must have an entry in ``OPERATIONS`` (what it reads and returns),
and a route without one is an error, so a new endpoint cannot silently be
left out of the document.

``GET /openapi.json`` is public, like ``/healthz``: the document describes
the API's shape only, never any data, and clients need it before they hold
a key (to generate a client, or to fuzz a server in CI).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.routing import BaseRoute, Route

from . import __version__
from .models import (
    ClaimResult,
    Delivery,
    ErrorBody,
    EventIn,
    EventPage,
    Health,
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

__all__ = ["OPERATIONS", "PUBLIC_PATHS", "build_document", "UnknownRoute"]

REF = "#/components/schemas/{name}"
SECURITY_SCHEME = "ApiKey"
# Routes that need no API key. UI pages, when present, are public too.
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json"})
# The web UI (another module): "/" redirects to "/ui/", pages live under "/ui".
UI_PATHS = frozenset({"/"})
PUBLIC_PREFIXES = ("/ui",)

ERROR_TEXT = {
    400: "Invalid request: a wrong type or value, an unknown field, a rule of the run state machine",
    401: "Missing or wrong X-API-Key (only when the server is started with API keys)",
    404: "Unknown id or name",
    409: "Stale attempt: the event's attempt is not the run's current attempt",
    413: "Request body over the server's limit (--max-body-bytes, default 1 MiB)",
    415: "Content-Type is not JSON",
}

# Query parameters, by name (schemas mirror the checks in gyoza.service).
# An empty value is the same as leaving the parameter out.
_INT62 = 2**62
_EMPTY = {"type": "string", "maxLength": 0}


def _or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, _EMPTY]}


QUERY: dict[str, dict[str, Any]] = {
    "after": {
        "description": "Only events with an id greater than this.",
        "schema": _or_empty({"type": "integer", "minimum": 0, "maximum": _INT62}),
    },
    "wait": {
        "description": "Long-poll for up to this many seconds (clamped to 25).",
        "schema": _or_empty({"type": "number", "minimum": 0}),
    },
    "limit": {
        "description": "Page size (default 50).",
        "schema": _or_empty({"type": "integer", "minimum": 1, "maximum": 1000}),
    },
    "events_limit": {
        "name": "limit",
        "description": "At most this many events (default: all of them).",
        "schema": _or_empty({"type": "integer", "minimum": 1, "maximum": 100_000}),
    },
    "cursor": {
        "description": "The next_cursor of the previous page (empty: the first page).",
        "schema": {"type": "string", "pattern": "^[0-9]{0,19}$"},
    },
    "state": {
        "description": "Only runs in this state (empty: every state).",
        "schema": {"type": "string", "enum": ["", *(s.value for s in OpRunState)]},
    },
    "definition": {
        "description": "Only runs created from this definition name.",
        "schema": {"type": "string"},
    },
    "version": {
        "description": "Definition version (default: the latest).",
        "schema": {"type": "string"},
    },
    "max": {
        "description": "Hand out at most this many runs (default: unlimited).",
        "schema": _or_empty({"type": "integer", "minimum": 0, "maximum": 100_000}),
    },
}

PATH_PARAMS: dict[str, dict[str, Any]] = {
    "name": {"description": "Definition name.", "schema": {"type": "string"}},
    "run_id": {"description": "Run id.", "schema": {"type": "string"}},
    "worker_id": {"description": "Worker id.", "schema": {"type": "string"}},
    "delivery_id": {"description": "Delivery id.", "schema": {"type": "integer", "minimum": 0}},
}


@dataclass(frozen=True)
class Operation:
    """What one route reads and answers; schemas are generated from the types."""

    summary: str
    ok: Any  # the 2xx answer's type
    ok_status: tuple[int, ...] = (200,)
    body: type | None = None  # the JSON request body's type
    reads_body: bool = False  # reads (and size-checks) a body without decoding it
    query: tuple[str, ...] = ()
    errors: frozenset[int] = field(default_factory=frozenset)  # beyond the automatic ones


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/healthz"): Operation("Liveness probe (no key needed)", ok=Health),
    ("GET", "/openapi.json"): Operation("This document (no key needed)", ok=dict[str, Any]),
    ("POST", "/definitions"): Operation(
        "Create or replace a definition (201 new, 200 replaced)",
        ok=OpDefinitionOut,
        ok_status=(201, 200),
        body=OpDefinition,
    ),
    ("GET", "/definitions"): Operation("Every definition, every version", ok=list[OpDefinitionOut]),
    ("GET", "/definitions/{name}"): Operation(
        "One version of a definition, or the latest", ok=OpDefinitionOut, query=("version",)
    ),
    ("POST", "/definitions/{name}/runs"): Operation(
        "Start a run of a definition; inputs are validated against its input_schema",
        ok=OpRun,
        ok_status=(201,),
        body=RunFromDefinition,
        query=("version",),
    ),
    ("POST", "/runs"): Operation(
        "Start an ad-hoc run of an image", ok=OpRun, ok_status=(201,), body=RunCreate
    ),
    ("GET", "/runs"): Operation(
        "One page of runs, newest first",
        ok=RunPage,
        query=("state", "definition", "limit", "cursor"),
    ),
    ("GET", "/runs/{run_id}"): Operation("A run with its events and attempts", ok=OpRun),
    ("PATCH", "/runs/{run_id}"): Operation(
        "Change state (acts as that event), outputs or priority", ok=OpRun, body=RunPatch
    ),
    ("POST", "/runs/{run_id}/retry"): Operation(
        "Reopen a FAILED or CANCELLED run as a new attempt",
        ok=OpRun,
        reads_body=True,
        errors=frozenset({400}),
    ),
    ("POST", "/runs/{run_id}/events"): Operation(
        "Append an event (attempt fences stale senders, seq makes resends safe)",
        ok=OpRun,
        body=EventIn,
        errors=frozenset({409}),
    ),
    ("GET", "/runs/{run_id}/events"): Operation(
        "Events after `after`, oldest first; `wait` long-polls",
        ok=EventPage,
        query=("after", "wait", "events_limit"),
    ),
    ("GET", "/runs/{run_id}/attempts"): Operation("Every attempt, oldest first", ok=list[OpAttempt]),
    ("GET", "/runs/{run_id}/deliveries"): Operation(
        "Webhook deliveries of the run's events", ok=list[Delivery]
    ),
    ("POST", "/runs/{run_id}/deliveries/{delivery_id}/redeliver"): Operation(
        "Send a FAILED delivery again", ok=Delivery, reads_body=True, errors=frozenset({400})
    ),
    ("GET", "/workers"): Operation("Every worker the server has seen", ok=list[Worker]),
    ("POST", "/workers/heartbeat"): Operation(
        "Register or refresh a worker; `cancel` lists runs to stop", ok=Worker, body=Heartbeat
    ),
    ("POST", "/workers/{worker_id}/claim"): Operation(
        "Claim the queued runs that fit; `wait` long-polls",
        ok=ClaimResult,
        reads_body=True,
        query=("wait", "max"),
    ),
}


class UnknownRoute(LookupError):
    """A route of the app has no entry in ``OPERATIONS``."""


def is_ui(path: str) -> bool:
    return path in UI_PATHS or path.startswith(PUBLIC_PREFIXES)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or is_ui(path)


def api_routes(routes: Iterable[BaseRoute]) -> list[tuple[str, str]]:
    """(method, path) of every API route: UI pages and HEAD aliases left out."""
    found = []
    for route in routes:
        if not isinstance(route, Route) or is_ui(route.path):
            continue
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append((method, route.path))
    return found


def _param_names(path: str) -> list[str]:
    return re.findall(r"{(\w+)(?::\w+)?}", path)


def build_document(routes: Iterable[BaseRoute], *, title: str = "gyoza") -> dict[str, Any]:
    """The OpenAPI 3.1 document for these routes."""
    pairs = api_routes(routes)
    missing = [f"{m} {p}" for m, p in pairs if (m, p) not in OPERATIONS]
    if missing:
        raise UnknownRoute("routes without an OPERATIONS entry: " + ", ".join(missing))

    # One schema_components call for every type, so shared parts are one component.
    types: list[Any] = [ErrorBody]
    for m, p in pairs:
        op = OPERATIONS[(m, p)]
        types.append(op.ok)
        if op.body is not None:
            types.append(op.body)
    refs, components = msgspec.json.schema_components(types, ref_template=REF)
    schema_of = dict(zip(map(id, types), refs, strict=True))
    error_ref = schema_of[id(ErrorBody)]

    paths: dict[str, dict[str, Any]] = {}
    for method, path in pairs:
        op = OPERATIONS[(method, path)]
        public = is_public(path)
        item: dict[str, Any] = {
            "operationId": _operation_id(method, path),
            "summary": op.summary,
        }
        params = [
            {"name": n, "in": "path", "required": True, **PATH_PARAMS.get(n, {"schema": {"type": "string"}})}
            for n in _param_names(path)
        ]
        for key in op.query:
            spec = dict(QUERY[key])
            name = spec.pop("name", key)
            params.append({"name": name, "in": "query", "required": False, **spec})
        if params:
            item["parameters"] = params
        if op.body is not None:
            item["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of[id(op.body)]}},
            }
        responses: dict[str, Any] = {}
        for status in op.ok_status:
            responses[str(status)] = {
                "description": "OK" if status == 200 else "Created",
                "content": {"application/json": {"schema": schema_of[id(op.ok)]}},
            }
        errs = set(op.errors)
        if not public:
            errs.add(401)
        if _param_names(path):
            errs.add(404)
        if op.body is not None or op.query:
            errs.add(400)
        if op.body is not None or op.reads_body:
            errs |= {400, 413, 415}
        for status in sorted(errs):
            responses[str(status)] = {
                "description": ERROR_TEXT[status],
                "content": {"application/json": {"schema": error_ref}},
            }
        item["responses"] = responses
        if public:
            item["security"] = []
        paths.setdefault(path, {})[method.lower()] = item

    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": __version__,
            "description": (
                "The gyoza job-runner API. Every error answer is "
                '`{"error": "<code>", "detail": "<what was wrong>"}`. '
                "An API key (header X-API-Key) is needed on every path but "
                "/healthz and /openapi.json when the server is started with keys."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                SECURITY_SCHEME: {"type": "apiKey", "in": "header", "name": "X-API-Key"}
            },
        },
        "security": [{SECURITY_SCHEME: []}],
    }


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.strip("/").replace(".", "_").split("/") if w]
    return "_".join([method.lower(), *words]) or method.lower()
