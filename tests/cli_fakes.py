"""Test helpers for the CLI tests: a fake worker and a CliRunner wrapper.

``FakeWorker`` speaks the real worker protocol to a real server through
``GyozaClient`` (heartbeat, long-poll claim, events with attempt and seq) but
runs no container: a *script* decides which events each claimed run gets.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from click.testing import CliRunner, Result

from gyoza.cli import cli
from gyoza.client import GyozaClient

Script = Callable[[GyozaClient, dict[str, Any], Callable[[str, Any, dict | None], Any]], None]


def complete(outputs: dict[str, Any] | None = None, logs: str = "hello from the op",
             progress: tuple[float, ...] = (50, 100)) -> Script:
    def script(client, op, send):
        send("STARTED", "", None)
        for pct in progress[:1]:
            send("PROGRESS", pct, None)
        send("LOG", logs, None)
        for pct in progress[1:]:
            send("PROGRESS", pct, None)
        send("COMPLETED", "", {"outputs": outputs if outputs is not None else {"answer": 42}})

    return script


def fail(message: str = "exit code 3: boom", exit_code: int = 3) -> Script:
    def script(client, op, send):
        send("STARTED", "", None)
        send("LOG", "about to fail", None)
        send("FAILED", message, {"error_message": message, "exit_code": exit_code,
                                 "reason": "FAILED"})

    return script


def start_then_wait(gate: threading.Event, then: Script | None = None) -> Script:
    """STARTED and a LOG line, then block until ``gate`` is set, then ``then`` (if any)."""

    def script(client, op, send):
        send("STARTED", "", None)
        send("LOG", "working...", None)
        gate.wait(30)
        if then is not None:
            then(client, op, lambda t, m, p: send(t, m, p) if t != "STARTED" else None)

    return script


class FakeWorker:
    def __init__(self, url: str, api_key: str | None = None, *, script: Script | None = None,
                 worker_id: str = "fake-worker", cpu_cores: float = 8, ram_mb: int = 16384,
                 gpus: int = 0) -> None:
        self.client = GyozaClient(url, api_key=api_key)
        self.script = script or complete()
        self.worker_id = worker_id
        self.resources = {
            "cpu_cores": cpu_cores,
            "ram_mb": ram_mb,
            "gpus": [{"id": i, "vram_mb": 81920, "name": "Fake GPU"} for i in range(gpus)],
        }
        self.ran: list[str] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-worker", daemon=True)

    def heartbeat(self) -> dict[str, Any]:
        return self.client.heartbeat(self.worker_id, self.resources, ["fake"])

    def _loop(self) -> None:
        try:
            self.heartbeat()
            while not self._stop.is_set():
                claimed = self.client.claim(self.worker_id, wait=0.5)
                for op in claimed.get("ops", []):
                    self._run(op)
                self.heartbeat()
        except BaseException as exc:  # surfaced by stop()
            if not self._stop.is_set():
                self.errors.append(exc)

    def _run(self, op: dict[str, Any]) -> None:
        seq = iter(range(1, 1_000_000))

        def send(kind: str, msg: Any, payload: dict | None) -> Any:
            return self.client.add_event(op["run_id"], kind, msg, payload,
                                         attempt=op["attempt"], seq=next(seq))

        self.ran.append(op["run_id"])
        self.script(self.client, op, send)

    def start(self) -> FakeWorker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.client.close()
        if self.errors:
            raise self.errors[0]

    def __enter__(self) -> FakeWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gyoza(server_url: str, *args: str, api_key: str | None = None, input: str | None = None) -> Result:
    """Invoke the CLI in-process against ``server_url`` (GYOZA_* env ignored)."""
    argv = ["--server", server_url]
    if api_key:
        argv += ["--api-key", api_key]
    runner = CliRunner()
    return runner.invoke(cli, argv + list(args), input=input,
                         env={"GYOZA_URL": None, "GYOZA_API_KEY": None, "COLUMNS": None})


def gyoza_process(server_url: str, *args: str, api_key: str | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gyoza.cli`` as a real process (what a user's shell runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GYOZA_")}
    argv = [sys.executable, "-m", "gyoza.cli", "--server", server_url]
    if api_key:
        argv += ["--api-key", api_key]
    return subprocess.run(argv + list(args), capture_output=True, text=True, timeout=timeout,
                          env=env)


def assert_one_error_line(output: str, *needles: str) -> None:
    """The failure is one ``Error:`` line naming what to do, and never a traceback."""
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], errors[0]
