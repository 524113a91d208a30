"""pytest plugin: the ``gyoza_server`` fixture, for your own CI.

Installing gyoza registers this plugin (entry point ``pytest11``), so any
test can ask for ``gyoza_server`` without a conftest::

    def test_my_op_definitions_deploy(gyoza_server):
        client = gyoza_server.client()
        client.upsert_definition({"name": "resize", "version": "1", "image": "me/resize:1"})
        assert client.get_definition("resize")["version"] == "1"

``gyoza_server`` is a running :class:`gyoza.testing.GyozaTestServer`: a real
gyoza HTTP server (no worker) in a background thread on a free loopback port,
with its own temporary SQLite database. Use ``.url`` for the CLI or your own
code (``GYOZA_URL``) and ``.client()`` for a ready ``GyozaClient``.

Scope: **function**. Every test gets a fresh server and an empty database,
so tests never see each other's definitions or runs. Starting one takes a
fraction of a second. To share one server across a module or session, build
your own fixture on ``GyozaTestServer``::

    @pytest.fixture(scope="session")
    def shared_gyoza():
        from gyoza.testing import GyozaTestServer
        with GyozaTestServer() as server:
            yield server

Server settings (``api_keys``, ``heartbeat_interval``, ``worker_timeout``...)
can be set per test with the ``gyoza_server_config`` marker::

    @pytest.mark.gyoza_server_config(api_keys=("secret",))
    def test_needs_a_key(gyoza_server): ...

This module imports nothing heavy at import time (pytest loads it in every
session of every project that has gyoza installed), and never fails to import.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["gyoza_server"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "gyoza_server_config(**overrides): ServerConfig overrides for the gyoza_server fixture",
    )


@pytest.fixture
def gyoza_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A real gyoza server on a free loopback port with a temporary database.

    Yields a started ``gyoza.testing.GyozaTestServer`` (``.url``, ``.client()``);
    stops it and deletes its database when the test ends.
    """
    from gyoza.testing import GyozaTestServer  # imported lazily: keep plugin loading cheap

    overrides: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("gyoza_server_config"))):
        overrides.update(marker.kwargs)
    with GyozaTestServer(**overrides) as server:
        yield server
