"""A fake worker driven through the real client: heartbeats, claims, events.

It runs no container; a test decides when each claimed run starts, ends or
disappears, so the server's scheduling and liveness rules can be observed.
"""

from __future__ import annotations

import time
from typing import Any

from gyoza.client import GyozaClient


def gpu(gpu_id: int, vram_mb: int, *tags: str) -> dict[str, Any]:
    return {"id": gpu_id, "vram_mb": vram_mb, "tags": list(tags)}


def resources(cpu: float = 4, ram_mb: int = 8192, gpus: list[dict] | None = None) -> dict[str, Any]:
    return {"cpu_cores": cpu, "ram_mb": ram_mb, "gpus": gpus or []}


class FakeWorker:
    def __init__(
        self,
        client: GyozaClient,
        worker_id: str,
        res: dict[str, Any] | None = None,
        tags: list[str] | None = None,
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.resources = res if res is not None else resources()
        self.tags = tags or []
        self.held: dict[str, dict[str, Any]] = {}  # run_id -> the op as claimed

    def heartbeat(self, running_ops: list[dict[str, Any]] | None | str = "held") -> dict[str, Any]:
        """Heartbeat; by default ``running_ops`` is what this worker holds."""
        if running_ops == "held":
            running_ops = self.running_ops()
        return self.client.heartbeat(self.worker_id, self.resources, self.tags, running_ops)

    def running_ops(self) -> list[dict[str, Any]]:
        return [{"run_id": rid, "attempt": op["attempt"]} for rid, op in self.held.items()]

    def claim(self, wait: float | None = None, max: int | None = None) -> dict[str, Any]:
        answer = self.client.claim(self.worker_id, wait=wait, max=max)
        for op in answer["ops"]:
            self.held[op["run_id"]] = op
        return answer

    def claim_ids(self, wait: float | None = None, max: int | None = None) -> list[str]:
        return [op["run_id"] for op in self.claim(wait=wait, max=max)["ops"]]

    def start(self, run_id: str) -> dict[str, Any]:
        return self.event(run_id, "STARTED", "")

    def complete(self, run_id: str, outputs: dict[str, Any] | None = None) -> dict[str, Any]:
        run = self.event(run_id, "COMPLETED", "", {"outputs": outputs or {}})
        self.held.pop(run_id, None)
        return run

    def fail(self, run_id: str, exit_code: int = 1, error: str = "boom") -> dict[str, Any]:
        payload = {"exit_code": exit_code, "error_message": error, "reason": "FAILED"}
        run = self.event(run_id, "FAILED", error, payload)
        self.held.pop(run_id, None)
        return run

    def event(self, run_id: str, type_: str, msg: Any, payload: dict | None = None) -> dict[str, Any]:
        attempt = self.held[run_id]["attempt"]
        return self.client.add_event(run_id, type_, msg, payload, attempt=attempt)

    def forget(self, run_id: str) -> None:
        """Stop reporting a run (as if its container vanished)."""
        self.held.pop(run_id, None)

    def status(self) -> dict[str, Any]:
        return next(w for w in self.client.list_workers() if w["worker_id"] == self.worker_id)


def wait_until(predicate, timeout: float = 10.0, every: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    t0 = time.monotonic()
    value = fn(*args, **kwargs)
    return value, time.monotonic() - t0
