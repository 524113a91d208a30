"""HTTP routes (Starlette) and the process that serves them (uvicorn).

Routes stay thin: decode the body into a model, call the service, encode
the answer. Every refusal is a ``GyozaError`` rendered as
``{"error", "detail"}``; nothing a client sends can produce a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from . import errors
from .config import ServerConfig
from .delivery import WebhookSender
from .errors import GyozaError, MethodNotAllowed, NotFound, PayloadTooLarge, Unauthorized
from .models import (
    EventIn,
    Heartbeat,
    OpDefinition,
    RunCreate,
    RunFromDefinition,
    RunPatch,
)
from .service import Service
from .store import Store
from .webui import ui_routes

log = logging.getLogger("gyoza.server")

_encoder = msgspec.json.Encoder()
Handler = Callable[[Request], Awaitable[Response]]
BackgroundTask = Callable[[ServerConfig], Awaitable[None]]


def json_response(data: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(data), status_code=status, media_type="application/json")


def raw_list_response(key: str | None, items: Sequence[bytes]) -> Response:
    """Splice pre-encoded JSON objects into a list (no decode/encode round trip)."""
    body = b"[" + b",".join(items) + b"]"
    if key is not None:
        body = b'{"' + key.encode() + b'":' + body + b"}"
    return Response(body, media_type="application/json")


def error_response(exc: GyozaError) -> Response:
    return json_response({"error": exc.code, "detail": exc.detail}, exc.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
        except ValueError:
            raise errors.BadRequest("Content-Length is not a number") from None
    ctype = request.headers.get("content-type")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if body and ctype is not None and "json" not in ctype.lower():
        raise errors.UnsupportedMediaType(
            f"Content-Type {ctype.split(';')[0]!r} is not accepted; send application/json"
        )
    return body


async def _disconnect(request: Request) -> None:
    """Return when the client hangs up (its body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Api:
    """The routes, bound to one service."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.service: Service | None = None
        self._keys = [k.encode() for k in config.api_keys]
        self._openapi: bytes | None = None

    @property
    def svc(self) -> Service:
        assert self.service is not None, "server not started"
        return self.service

    def authorise(self, request: Request) -> None:
        if not self._keys:
            return
        given = request.headers.get("x-api-key")
        if given is None:
            raise Unauthorized("missing X-API-Key header; this server requires an API key")
        given_b = given.encode("utf-8", "surrogateescape")
        # Compare against every key so timing does not tell which one matched.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(given_b, key)
        if not ok:
            raise Unauthorized("wrong API key in X-API-Key")

    def endpoint(self, handler: Handler, *, public: bool = False) -> Handler:
        async def run(request: Request) -> Response:
            try:
                if not public:
                    self.authorise(request)
                return await handler(request)
            except GyozaError as exc:
                return error_response(exc)

        run.__name__ = handler.__name__
        run.__doc__ = handler.__doc__
        return run

    async def body(self, request: Request, type_: type) -> Any:
        return errors.decode(await read_body(request, self.config.max_body_bytes), type_)

    # -- handlers ---------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        """Liveness probe; needs no key."""
        return json_response({"status": "ok"})

    async def openapi(self, request: Request) -> Response:
        """The OpenAPI 3.1 document of this app's routes; needs no key (shape only, no data)."""
        if self._openapi is None:
            from .openapi import build_document

            self._openapi = _encoder.encode(build_document(request.app.routes))
        return Response(self._openapi, media_type="application/json")

    async def upsert_definition(self, request: Request) -> Response:
        d = await self.body(request, OpDefinition)
        out, created = await self.svc.upsert_definition(d)
        return json_response(out, 201 if created else 200)

    async def list_definitions(self, request: Request) -> Response:
        return json_response(await self.svc.list_definitions())

    async def get_definition(self, request: Request) -> Response:
        name = request.path_params["name"]
        version = request.query_params.get("version") or None
        return json_response(await self.svc.get_definition(name, version))

    async def create_run_from_definition(self, request: Request) -> Response:
        body = await self.body(request, RunFromDefinition)
        name = request.path_params["name"]
        version = request.query_params.get("version") or None
        return json_response(await self.svc.create_run_from_definition(name, version, body), 201)

    async def create_run(self, request: Request) -> Response:
        body = await self.body(request, RunCreate)
        return json_response(await self.svc.create_run(body), 201)

    async def list_runs(self, request: Request) -> Response:
        q = request.query_params
        page = await self.svc.list_runs(
            state=q.get("state") or None,
            definition=q.get("definition") or None,
            limit=q.get("limit"),
            cursor=q.get("cursor"),
        )
        return json_response(page)

    async def get_run(self, request: Request) -> Response:
        return json_response(await self.svc.get_run(request.path_params["run_id"]))

    async def patch_run(self, request: Request) -> Response:
        patch = await self.body(request, RunPatch)
        return json_response(await self.svc.patch_run(request.path_params["run_id"], patch))

    async def retry_run(self, request: Request) -> Response:
        await read_body(request, self.config.max_body_bytes)
        return json_response(await self.svc.retry_run(request.path_params["run_id"]))

    async def add_event(self, request: Request) -> Response:
        ev = await self.body(request, EventIn)
        return json_response(await self.svc.add_event(request.path_params["run_id"], ev))

    async def list_events(self, request: Request) -> Response:
        q = request.query_params
        bodies = await self.svc.events(
            request.path_params["run_id"], after=q.get("after"), wait=q.get("wait"), limit=q.get("limit")
        )
        return raw_list_response("events", bodies)

    async def list_attempts(self, request: Request) -> Response:
        return json_response(await self.svc.attempts(request.path_params["run_id"]))

    async def list_deliveries(self, request: Request) -> Response:
        return json_response(await self.svc.list_deliveries(request.path_params["run_id"]))

    async def redeliver(self, request: Request) -> Response:
        await read_body(request, self.config.max_body_bytes)
        run_id = request.path_params["run_id"]
        raw = request.path_params["delivery_id"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            raise NotFound(f"no delivery {raw[:40]!r} on run {run_id!r}")
        return json_response(await self.svc.redeliver(run_id, int(raw)))

    async def list_workers(self, request: Request) -> Response:
        return json_response(await self.svc.list_workers())

    async def heartbeat(self, request: Request) -> Response:
        hb = await self.body(request, Heartbeat)
        return json_response(await self.svc.heartbeat(hb))

    async def claim(self, request: Request) -> Response:
        await read_body(request, self.config.max_body_bytes)
        q = request.query_params
        claim = self.svc.claim(
            request.path_params["worker_id"], wait=q.get("wait"), max_ops=q.get("max")
        )
        if not q.get("wait"):
            return json_response(await claim)
        # A long-poll whose worker hung up must stop waiting at once: else it
        # would take the next run for a worker that never hears of it.
        task = asyncio.ensure_future(claim)
        hangup = asyncio.ensure_future(_disconnect(request))
        try:
            await asyncio.wait({task, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return Response(status_code=499)
        return json_response(task.result())

    def routes(self) -> list[BaseRoute]:
        e = self.endpoint
        return [
            Route("/healthz", e(self.healthz, public=True), methods=["GET"]),
            Route("/openapi.json", e(self.openapi, public=True), methods=["GET"]),
            Route("/definitions", e(self.upsert_definition), methods=["POST"]),
            Route("/definitions", e(self.list_definitions), methods=["GET"]),
            Route("/definitions/{name}", e(self.get_definition), methods=["GET"]),
            Route("/definitions/{name}/runs", e(self.create_run_from_definition), methods=["POST"]),
            Route("/runs", e(self.create_run), methods=["POST"]),
            Route("/runs", e(self.list_runs), methods=["GET"]),
            Route("/runs/{run_id}", e(self.get_run), methods=["GET"]),
            Route("/runs/{run_id}", e(self.patch_run), methods=["PATCH"]),
            Route("/runs/{run_id}/retry", e(self.retry_run), methods=["POST"]),
            Route("/runs/{run_id}/events", e(self.add_event), methods=["POST"]),
            Route("/runs/{run_id}/events", e(self.list_events), methods=["GET"]),
            Route("/runs/{run_id}/attempts", e(self.list_attempts), methods=["GET"]),
            Route("/runs/{run_id}/deliveries", e(self.list_deliveries), methods=["GET"]),
            Route(
                "/runs/{run_id}/deliveries/{delivery_id}/redeliver",
                e(self.redeliver),
                methods=["POST"],
            ),
            Route("/workers", e(self.list_workers), methods=["GET"]),
            Route("/workers/heartbeat", e(self.heartbeat), methods=["POST"]),
            Route("/workers/{worker_id}/claim", e(self.claim), methods=["POST"]),
        ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"no route {request.method} {request.url.path}"))
    if exc.status_code == 405:
        return error_response(
            MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        )
    return json_response({"error": "http_error", "detail": str(exc.detail)}, exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return json_response({"error": "internal", "detail": "unexpected server error (logged)"}, 500)


def build_app(
    config: ServerConfig,
    background: Sequence[BackgroundTask] = (),
    drains: Sequence[Callable[[], Awaitable[None]]] = (),
) -> Starlette:
    """The ASGI app; opening the store and background tasks live in its lifespan.

    ``drains`` run at shutdown while the server still answers requests (an
    embedded worker uses this to finish its runs and report them).
    """
    # aiosqlite logs every call with its arguments at DEBUG (webhook secrets included).
    sqlite_log = logging.getLogger("aiosqlite")
    sqlite_log.setLevel(max(sqlite_log.level, logging.INFO))
    api = Api(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = Store(config.db, sync=config.sync)
        await store.open()
        service = Service(store, config)
        api.service = service
        app.state.service = service
        await service.start()
        sender = WebhookSender(store, config)
        service.on_new_events = sender.wake
        await sender.start()
        sender.wake()  # deliveries left PENDING by the previous process
        tasks = [asyncio.create_task(fn(config)) for fn in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await sender.stop()
            await service.stop()
            await store.close()

    routes = api.routes() + ui_routes()
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.api = api
    app.state.drains = list(drains)
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request (the embedded worker's heartbeats) is noise.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def serve(
    config: ServerConfig,
    background: Sequence[BackgroundTask] = (),
    drains: Sequence[Callable[[], Awaitable[None]]] = (),
) -> None:
    """Run the server until SIGINT/SIGTERM (uvicorn shuts down cleanly on both)."""
    from .store import StoreError

    configure_logging()
    try:
        # Fail fast with one line on an unusable database, before binding.
        asyncio.run(_check_db(config))
    except StoreError as exc:
        raise SystemExit(f"Error: {exc}") from None
    app = build_app(config, background, drains)
    auth = f"API key required ({len(config.api_keys)} key(s))" if config.api_keys else "no API key"
    if not config.api_keys and not _is_loopback(config.host):
        log.warning("listening on %s WITHOUT an API key: anyone who can reach it can run containers",
                    config.host)
    print(
        f"gyoza server on http://{config.host}:{config.port} · db {config.db} · {auth}"
        + ("" if config.api_keys else " (loopback only unless --host says otherwise)"),
        file=sys.stderr,
        flush=True,
    )
    server = uvicorn_server(app, host=config.host, port=config.port, timeout_graceful_shutdown=5)
    # uvicorn re-raises the stopping signal once it has shut down; end quietly
    # with status 0 instead of "Aborted!" or death by SIGTERM.
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        server.run()
    except KeyboardInterrupt:
        pass


def _exit_quietly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def uvicorn_server(app: Starlette, **options: Any) -> Any:
    """A uvicorn server whose shutdown first ends the app's open long-polls.

    uvicorn waits for in-flight requests before the lifespan shutdown runs,
    so without this a worker's 25 s claim long-poll would hold up every stop.
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            for drain in getattr(app.state, "drains", ()):
                try:
                    await drain()
                except Exception:
                    log.exception("a shutdown drain failed")
            service = getattr(app.state, "service", None)
            if service is not None:
                service.begin_shutdown()
            await super().shutdown(sockets=sockets)

    return Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", **options))


async def _check_db(config: ServerConfig) -> None:
    store = Store(config.db, sync=config.sync)
    await store.open()
    await store.close()
