"""Fixtures and helpers for tests that need a real Docker engine.

Import the fixture functions into a test module (``from .docker_fixtures
import docker_engine_fixture, busybox_image_fixture``); tests then ask for
``docker_engine`` / ``busybox_image`` by name. Without an engine these tests skip, except
under ``CI=true``, where a missing engine is a failure: CI must not go green
by skipping the product's core.

The test image is built locally from ``FROM scratch`` plus a static busybox
binary (Debian package ``busybox-static``): no registry is ever contacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gyoza.client import AsyncGyozaClient
from gyoza.worker import Worker, WorkerOptions

BUSYBOX_IMAGE = "gyoza-test-busybox:1"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _docker(*args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session", name="docker_engine")
def docker_engine_fixture() -> None:
    """Skip (or fail under CI=true) when no Docker engine answers."""
    if shutil.which("docker") is None:
        _unavailable("the docker CLI is not installed")
    try:
        info = _docker("info", "--format", "{{.ServerVersion}}", timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"docker info failed: {exc}")
    if info.returncode != 0 or not info.stdout.strip():
        _unavailable(f"no Docker engine: {info.stderr.strip()[:300]}")


@pytest.fixture(scope="session", name="busybox_image")
def busybox_image_fixture(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny local image with busybox applets on PATH; built once, reused if present."""
    if _docker("image", "inspect", BUSYBOX_IMAGE).returncode == 0:
        return BUSYBOX_IMAGE
    binary = next((p for p in BUSYBOX_CANDIDATES if Path(p).is_file()), None)
    if binary is None:
        _unavailable("no static busybox binary (apt-get install busybox-static)")
    context = tmp_path_factory.mktemp("busybox-image")
    shutil.copy(binary, context / "busybox")
    (context / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        'CMD ["sh"]\n'
    )
    built = _docker("build", "-q", "-t", BUSYBOX_IMAGE, str(context), timeout=300)
    if built.returncode != 0:
        pytest.fail(f"could not build {BUSYBOX_IMAGE}: {built.stderr.strip()[:500]}")
    return BUSYBOX_IMAGE


def containers_of(label: str) -> list[str]:
    """Ids of every container (running or not) carrying ``label`` (``key`` or ``key=value``)."""
    out = _docker("ps", "-aq", "--filter", f"label={label}")
    return out.stdout.split()


def remove_containers(label: str) -> None:
    ids = containers_of(label)
    if ids:
        _docker("rm", "-f", *ids)


def new_worker_id() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def worker_options(url: str, state_dir: Path, **overrides: Any) -> WorkerOptions:
    """Options for a worker under test: fixed resources, no GPUs, fast loops."""
    values: dict[str, Any] = {
        "server": url,
        "worker_id": new_worker_id(),
        "state_dir": state_dir,
        "cpu_cores": 4.0,
        "ram_mb": 8192,
        "gpus": [],
        "heartbeat_interval": 0.5,
        "claim_wait": 2.0,
        "drain_timeout": 5.0,
        "docker_retry_s": 1.0,
    }
    values.update(overrides)
    return WorkerOptions(**values)


@contextlib.asynccontextmanager
async def running_worker(options: WorkerOptions) -> AsyncIterator[Worker]:
    """A Worker running in this event loop; drained and cleaned up at exit."""
    worker = Worker(options)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.request_shutdown()
        try:
            await asyncio.wait_for(task, 30)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        finally:
            remove_containers(f"gyoza.worker_id={options.worker_id}")


async def wait_for_run(
    client: AsyncGyozaClient,
    run_id: str,
    *,
    timeout: float = 30,
    until: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Poll until the run is terminal (or ``until(run)``); the full run with events."""
    deadline = time.monotonic() + timeout
    while True:
        run = await client.get_run(run_id)
        if (until(run) if until else run["state"] in TERMINAL):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(
                f"run {run_id} still {run['state']} after {timeout} s; events: "
                + json.dumps([(e["type"], e["msg"]) for e in run.get("events", [])])[:2000]
            )
        await asyncio.sleep(0.1)


def log_lines(run: dict[str, Any]) -> list[str]:
    """Every LOG line of the run, in event order."""
    lines: list[str] = []
    for event in run["events"]:
        if event["type"] == "LOG":
            lines.extend(str(event["msg"]).split("\n"))
    return lines


def sh(script: str) -> list[str]:
    """A busybox shell command for an op."""
    return ["sh", "-c", script]
