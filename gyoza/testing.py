"""A real gyoza server for tests: ``GyozaTestServer``.

It runs the same app as ``gyoza server`` (uvicorn, real HTTP on loopback,
a real SQLite file) in a background thread with its own event loop, on a
free port, with a temporary database unless told otherwise::

    with GyozaTestServer() as server:
        client = server.client()
        client.create_run("busybox", {})

``stop()`` and ``start()`` keep the port and the database file, so a test can
restart the server under a connected worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import tempfile
import threading
from typing import Any

from .client import AsyncGyozaClient, GyozaClient
from .config import ServerConfig
from .server import BackgroundTask, build_app, uvicorn_server

__all__ = ["GyozaTestServer"]


class GyozaTestServer:
    def __init__(
        self,
        *,
        db: str | None = None,
        background: tuple[BackgroundTask, ...] = (),
        **overrides: Any,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if db is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gyoza-test-")
            db = os.path.join(self._tmp.name, "gyoza.db")
        self._sock = self._bind(overrides.pop("port", 0))
        port = self._sock.getsockname()[1]
        self.config = ServerConfig(host="127.0.0.1", port=port, db=db, **overrides)
        self._background = background
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._error: BaseException | None = None

    @staticmethod
    def _bind(port: int) -> socket.socket:
        # proto=IPPROTO_TCP lets asyncio set TCP_NODELAY on accepted
        # connections; without it every keep-alive answer waits ~40 ms (Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    @property
    def db_path(self) -> str:
        return self.config.db

    @property
    def api_key(self) -> str | None:
        return self.config.api_keys[0] if self.config.api_keys else None

    def client(self, api_key: str | None = None, **kw: Any) -> GyozaClient:
        return GyozaClient(self.url, api_key=api_key or self.api_key, **kw)

    def async_client(self, api_key: str | None = None, **kw: Any) -> AsyncGyozaClient:
        return AsyncGyozaClient(self.url, api_key=api_key or self.api_key, **kw)

    def replace_config(self, **changes: Any) -> None:
        """Change settings for the next ``start()`` (e.g. API keys)."""
        self.config = dataclasses.replace(self.config, **changes)

    def start(self) -> GyozaTestServer:
        if self._thread is not None:
            return self
        if self._sock.fileno() == -1:
            self._sock = self._bind(self.config.port)
        app = build_app(self.config, self._background)
        self._server = uvicorn_server(app)
        self._error = None
        started = threading.Event()

        def run() -> None:
            try:
                asyncio.run(self._server.serve(sockets=[self._sock]))
            except BaseException as exc:  # surfaced by start()
                self._error = exc
            finally:
                started.set()

        self._thread = threading.Thread(target=run, name="gyoza-test-server", daemon=True)
        self._thread.start()
        while not started.wait(0.01):
            if self._server.started:
                break
        if self._error is not None or not self._server.started:
            self._thread = None
            raise RuntimeError(f"gyoza test server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._thread = None
        self._sock.close()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> GyozaTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
