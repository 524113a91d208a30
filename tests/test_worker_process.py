"""The worker as users run it: ``gyoza worker`` and ``gyoza up`` processes.

Killing a process is the point of several tests here, so the worker runs as
a subprocess; the server is either a ``GyozaTestServer`` in this process or
the one inside ``gyoza up``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gyoza.client import GyozaClient
from gyoza.testing import GyozaTestServer

from .docker_fixtures import (  # noqa: F401  (fixtures are found by name)
    busybox_image_fixture,
    containers_of,
    docker_engine_fixture,
    log_lines,
    new_worker_id,
    remove_containers,
    sh,
)

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A ``gyoza`` subprocess whose stderr goes to a file we can read."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gyoza.cli", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc.poll() is None, f"process exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"{text!r} not in output:\n{self.output()}"
            time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        self.kill(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()


def wait_for_run(client: GyozaClient, run_id: str, until=None, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = client.get_run(run_id)
        if (until(run) if until else run["state"] in TERMINAL):
            return run
        assert time.monotonic() < deadline, f"run {run_id} stuck in {run['state']}: {run.get('events')}"
        time.sleep(0.1)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def gserver(tmp_path) -> Iterator[GyozaTestServer]:
    with GyozaTestServer(db=str(tmp_path / "gyoza.db"), heartbeat_interval=0.5, worker_timeout=10.0) as s:
        yield s


def start_worker(url: str, worker_id: str, tmp_path: Path, name: str, drain: float = 5) -> Process:
    return Process(
        ["worker", "--server", url, "--worker-id", worker_id, "--heartbeat-interval", "0.5",
         "--cpu-cores", "2", "--ram-mb", "4096", "--drain-timeout", str(drain), "--claim-wait", "2",
         "--state-dir", str(tmp_path / "state")],
        tmp_path / f"{name}.log",
    )


TICKS = (
    'echo "GYOZA:{\\"type\\":\\"OUTPUTS\\",\\"outputs\\":{\\"early\\":1}}"; '
    "i=0; while [ $i -lt 20 ]; do echo tick-$i; sleep 0.3; i=$((i+1)); done; "
    'echo "{\\"late\\":2}" > /gyoza/outputs.json'
)


@pytest.mark.docker
def test_worker_killed_mid_run_reattaches_on_restart_and_the_run_completes(gserver, busybox_image, tmp_path):
    worker_id = new_worker_id()
    client = gserver.client()
    run = client.create_run(busybox_image, {}, command=sh(TICKS))
    first = start_worker(gserver.url, worker_id, tmp_path, "first")
    second = None
    try:
        wait_for_run(client, run["id"], until=lambda r: "tick-2" in log_lines(r))
        first.kill(signal.SIGKILL)
        first.proc.wait(10)
        assert containers_of(f"gyoza.run_id={run['id']}"), "the container must outlive its worker"
        time.sleep(1)
        second = start_worker(gserver.url, worker_id, tmp_path, "second")
        done = wait_for_run(client, run["id"], timeout=40)
        assert done["state"] == "COMPLETED", done["error"]
        # OUTPUTS printed before the crash are recovered from the container's log.
        assert done["outputs"] == {"early": 1, "late": 2}
        ticks = [line for line in log_lines(done) if line.startswith("tick-")]
        assert ticks == [f"tick-{i}" for i in range(20)]
        assert [e["type"] for e in done["events"]].count("STARTED") == 1
        assert done["attempt"] == 1
        wait_until(lambda: not containers_of(f"gyoza.run_id={run['id']}"), 10, "container left behind")
        assert "reattaching to container" in second.output()
    finally:
        first.stop()
        if second is not None:
            second.stop()
        remove_containers(f"gyoza.worker_id={worker_id}")


@pytest.mark.docker
def test_container_of_a_run_cancelled_while_its_worker_was_down_is_removed_on_restart(
    gserver, busybox_image, tmp_path
):
    worker_id = new_worker_id()
    client = gserver.client()
    run = client.create_run(busybox_image, {}, command=sh("echo up; sleep 60"))
    first = start_worker(gserver.url, worker_id, tmp_path, "first")
    second = None
    try:
        wait_for_run(client, run["id"], until=lambda r: r["state"] == "RUNNING")
        first.kill(signal.SIGKILL)
        first.proc.wait(10)
        client.cancel_run(run["id"])
        assert containers_of(f"gyoza.run_id={run['id']}")
        second = start_worker(gserver.url, worker_id, tmp_path, "second")
        wait_until(lambda: not containers_of(f"gyoza.run_id={run['id']}"), 15,
                   "the restarted worker did not remove the cancelled run's container")
        assert client.get_run(run["id"])["state"] == "CANCELLED"
        assert not list((tmp_path / "state" / "work" / worker_id).iterdir())
    finally:
        first.stop()
        if second is not None:
            second.stop()
        remove_containers(f"gyoza.worker_id={worker_id}")


@pytest.mark.docker
def test_sigterm_lets_running_ops_finish_within_the_drain_timeout(gserver, busybox_image, tmp_path):
    worker_id = new_worker_id()
    client = gserver.client()
    run = client.create_run(busybox_image, {}, command=sh("echo begin; sleep 2; echo end"))
    worker = start_worker(gserver.url, worker_id, tmp_path, "worker", drain=20)
    try:
        wait_for_run(client, run["id"], until=lambda r: r["state"] == "RUNNING")
        worker.kill(signal.SIGTERM)
        late = client.create_run(busybox_image, {}, command=["true"])
        assert worker.proc.wait(20) == 0
        done = client.get_run(run["id"])
        assert done["state"] == "COMPLETED" and "end" in log_lines(done)
        assert client.get_run(late["id"])["state"] == "PENDING"  # a draining worker claims nothing
    finally:
        worker.stop()
        remove_containers(f"gyoza.worker_id={worker_id}")


@pytest.mark.docker
def test_sigterm_stops_ops_still_running_after_the_drain_timeout_and_reports_them_failed(
    gserver, busybox_image, tmp_path
):
    worker_id = new_worker_id()
    client = gserver.client()
    run = client.create_run(busybox_image, {}, command=sh("echo begin; sleep 60"))
    worker = start_worker(gserver.url, worker_id, tmp_path, "worker", drain=1)
    try:
        wait_for_run(client, run["id"], until=lambda r: r["state"] == "RUNNING")
        stopped_at = time.monotonic()
        worker.kill(signal.SIGTERM)
        assert worker.proc.wait(20) == 0
        assert time.monotonic() - stopped_at < 8
        done = client.get_run(run["id"])
        assert done["state"] == "FAILED"
        assert "shutting down" in done["error"].split("\n")[0]
        assert containers_of(f"gyoza.run_id={run['id']}") == []
    finally:
        worker.stop()
        remove_containers(f"gyoza.worker_id={worker_id}")


def start_up(tmp_path: Path, port: int, worker_id: str, env: dict[str, str] | None = None,
             drain_timeout: float = 30) -> Process:
    return Process(
        ["up", "--port", str(port), "--db", str(tmp_path / "up.db"),
         "--heartbeat-interval", "0.5", "--worker-timeout", "5",
         "--worker-id", worker_id, "--state-dir", str(tmp_path / "state"),
         "--cpu-cores", "2", "--ram-mb", "4096", "--claim-wait", "2",
         "--drain-timeout", str(drain_timeout)],
        tmp_path / "up.log",
        env,
    )


def wait_healthy(url: str, proc: Process) -> None:
    def healthy() -> bool:
        assert proc.proc.poll() is None, f"gyoza up exited:\n{proc.output()}"
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 20, "gyoza up did not answer /healthz")


@pytest.mark.docker
def test_gyoza_up_serves_and_runs_ops_with_its_embedded_worker(busybox_image, tmp_path):
    port, worker_id = free_port(), new_worker_id()
    url = f"http://127.0.0.1:{port}"
    up = start_up(tmp_path, port, worker_id)
    try:
        wait_healthy(url, up)
        with GyozaClient(url) as client:
            run = client.create_run(
                busybox_image, {"x": 1},
                command=sh('echo "GYOZA:{\\"type\\":\\"OUTPUTS\\",\\"outputs\\":$GYOZA_INPUTS}"; echo done'),
            )
            done = wait_for_run(client, run["id"])
            assert done["state"] == "COMPLETED", done["error"]
            assert done["outputs"] == {"x": 1}
            assert "done" in log_lines(done)
            assert [w["worker_id"] for w in client.list_workers()] == [worker_id]
        assert up.stop(timeout=20) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM
        assert containers_of(f"gyoza.worker_id={worker_id}") == []
    finally:
        up.stop()
        remove_containers(f"gyoza.worker_id={worker_id}")


@pytest.mark.docker
def test_stopping_gyoza_up_drains_then_stops_reports_and_removes_its_containers(
    busybox_image, tmp_path
):
    port, worker_id = free_port(), new_worker_id()
    url = f"http://127.0.0.1:{port}"
    up = start_up(tmp_path, port, worker_id, drain_timeout=1)
    try:
        wait_healthy(url, up)
        with GyozaClient(url) as client:
            run = client.create_run(busybox_image, {}, command=sh("echo begin; sleep 60"),
                                    retry_policy={"max_attempts": 1})
            wait_for_run(client, run["id"], until=lambda r: r["state"] == "RUNNING")
        assert containers_of(f"gyoza.worker_id={worker_id}")
        assert up.stop(timeout=30) in (0, -signal.SIGTERM)
        assert containers_of(f"gyoza.worker_id={worker_id}") == []
        # The embedded worker reported the stop before the server went away.
        with GyozaTestServer(db=str(tmp_path / "up.db")) as again, again.client() as client:
            assert client.get_run(run["id"])["state"] == "FAILED"
    finally:
        up.stop()
        remove_containers(f"gyoza.worker_id={worker_id}")


def test_gyoza_up_without_docker_still_serves_and_says_why_it_takes_no_work(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    up = start_up(tmp_path, port, new_worker_id(),
                  {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    try:
        wait_healthy(url, up)
        up.wait_for_output("not taking work")
        with GyozaClient(url) as client:
            run = client.create_run("busybox", {})
            assert client.get_run(run["id"])["state"] == "PENDING"
            assert client.list_workers() == []
        assert up.output().count("not taking work") == 1  # said once, not every retry
    finally:
        assert up.stop(timeout=20) in (0, -signal.SIGTERM)


@pytest.mark.docker
def test_worker_with_a_wrong_api_key_exits_with_one_clear_line(docker_engine, tmp_path):
    with GyozaTestServer(db=str(tmp_path / "k.db"), api_keys=("right",)) as keyed:
        worker = Process(
            ["worker", "--server", keyed.url, "--api-key", "wrong", "--worker-id", new_worker_id(),
             "--state-dir", str(tmp_path / "state")],
            tmp_path / "worker.log",
        )
        assert worker.proc.wait(20) == 1
        worker.stop()
    errors = [line for line in worker.output().splitlines() if line.startswith("Error:")]
    assert errors == ["Error: the server refused this worker: wrong API key in X-API-Key"]
    assert "Traceback" not in worker.output()
