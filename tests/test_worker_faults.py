"""Worker faults (issue 7): the infrastructure under a running op breaks.

Each test ends with the run in the right state and no container of it left
(``docker ps -a --filter label=gyoza.run_id=<id>`` empty).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gyoza.client import AsyncGyozaClient
from gyoza.testing import GyozaTestServer

from .docker_fixtures import (  # noqa: F401  (fixtures are found by name)
    busybox_image_fixture,
    containers_of,
    docker_engine_fixture,
    log_lines,
    running_worker,
    sh,
    wait_for_run,
    worker_options,
)

pytestmark = pytest.mark.docker

DOCKERD_LOG = "/tmp/dockerd.log"
DOCKER_PID = Path("/var/run/docker.pid")


@pytest.fixture
def gserver(tmp_path) -> Iterator[GyozaTestServer]:
    with GyozaTestServer(db=str(tmp_path / "gyoza.db"), heartbeat_interval=0.5, worker_timeout=5.0) as s:
        yield s


@pytest.fixture
async def api(gserver: GyozaTestServer) -> AsyncIterator[AsyncGyozaClient]:
    async with gserver.async_client() as c:
        yield c


# -- the Docker engine, stopped and started like .ci/run does ------------------------------


def _dockerd_running() -> bool:
    return subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode == 0


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _stop_dockerd(timeout: float = 60) -> None:
    subprocess.run(["pkill", "-TERM", "-x", "dockerd"], capture_output=True)
    deadline = time.monotonic() + timeout
    while _dockerd_running():
        if time.monotonic() > deadline:
            raise AssertionError(f"dockerd still running {timeout:g} s after SIGTERM")
        time.sleep(0.2)


def _start_dockerd(timeout: float = 60) -> None:
    """Start the engine as .ci/run does; pytest.fail (with its log) when it does not answer."""
    if _docker_answers():
        return
    if DOCKER_PID.exists() and not _dockerd_running():
        DOCKER_PID.unlink(missing_ok=True)
    if not _dockerd_running():
        with open(DOCKERD_LOG, "ab") as out:
            subprocess.Popen(
                ["dockerd"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # setsid: outlives this test process
            )
    deadline = time.monotonic() + timeout
    while not _docker_answers():
        if time.monotonic() > deadline:
            try:
                tail = "".join(Path(DOCKERD_LOG).read_text(errors="replace").splitlines(True)[-20:])
            except OSError:
                tail = "(no log)"
            pytest.fail(f"the Docker engine could not be restored within {timeout:g} s; "
                        f"{DOCKERD_LOG} ends with:\n{tail}")
        time.sleep(0.5)


def _restart_dockerd() -> None:
    """Stop the engine and start it again; the engine is always restored (or the test fails)."""
    try:
        _stop_dockerd()
    finally:
        _start_dockerd()


@pytest.fixture
def restartable_engine(docker_engine: None) -> None:
    if os.geteuid() != 0 or not _dockerd_running():
        pytest.skip("restarting the Docker engine needs root and a local dockerd")


async def _until_no_container(run_id: str, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := await asyncio.to_thread(containers_of, f"gyoza.run_id={run_id}")) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return left


async def test_docker_engine_restarted_mid_run_ends_the_run_and_leaves_no_container(
    gserver, api, busybox_image, restartable_engine, tmp_path
):
    run = await api.create_run(busybox_image, {}, command=sh("echo working; sleep 60"))
    options = worker_options(gserver.url, tmp_path)
    async with running_worker(options):
        await wait_for_run(api, run["id"], until=lambda r: "working" in log_lines(r), timeout=30)
        assert containers_of(f"gyoza.run_id={run['id']}") != []
        # Stands in for a container whose removal failed while the engine was down
        # (what a dockerd crash leaves): the sweep after reconnecting must take it too.
        leftover_run = f"leftover-{run['id']}"
        created = subprocess.run(
            ["docker", "create", "--label", f"gyoza.worker_id={options.worker_id}",
             "--label", f"gyoza.run_id={leftover_run}", "--label", "gyoza.attempt=1", busybox_image, "true"],
            capture_output=True, text=True, timeout=60,
        )
        assert created.returncode == 0, created.stderr

        await asyncio.to_thread(_restart_dockerd)  # without live-restore the container dies with it

        # Reported promptly, with the cause, not left RUNNING until the op would have ended.
        done = await wait_for_run(api, run["id"], timeout=30)
        assert done["state"] == "FAILED", done
        assert done["error"].startswith("Docker engine connection lost"), done["error"]
        assert done["events"][-1]["type"] == "FAILED"
        # Docker back: the worker reconnects and sweeps the dead container.
        assert await _until_no_container(run["id"]) == []
        assert await _until_no_container(leftover_run) == []

        # And it takes work again.
        after = await api.create_run(busybox_image, {}, command=sh("echo after the restart"))
        finished = await wait_for_run(api, after["id"], timeout=60)
        assert finished["state"] == "COMPLETED", finished["error"]
        assert "after the restart" in log_lines(finished)

    assert containers_of(f"gyoza.run_id={run['id']}") == []
    assert containers_of(f"gyoza.worker_id={options.worker_id}") == []
