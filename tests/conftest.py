"""Shared fixtures: a real gyoza server on loopback with a temporary SQLite file."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gyoza.client import GyozaClient
from gyoza.testing import GyozaTestServer

RESOURCES = {"cpu_cores": 4, "ram_mb": 8192, "gpus": []}


@pytest.fixture
def server(tmp_path) -> Iterator[GyozaTestServer]:
    """A fresh server per test, with short liveness timings."""
    with GyozaTestServer(
        db=str(tmp_path / "gyoza.db"), heartbeat_interval=0.5, worker_timeout=2.0
    ) as s:
        yield s


@pytest.fixture
def client(server: GyozaTestServer) -> Iterator[GyozaClient]:
    with server.client() as c:
        yield c


def definition(name: str = "hello", version: str = "1", **extra) -> dict:
    return {"name": name, "version": version, "image": "busybox:latest", **extra}
