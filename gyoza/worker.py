"""The worker: an asyncio agent that turns claimed runs into containers.

One process, one event loop, a few long-lived tasks:

- heartbeat: every ``heartbeat_interval``, resources plus ``running_ops``
  (every run this worker holds, from claim until its last event is
  delivered, so the server never declares a live run lost);
- claim: a long-poll that hands out runs fitting the free slots, and that
  returns at once when one of our runs is cancelled;
- one ``Execution`` per run: pull, start, stream lines, wait, report.

The worker only knows containers through ``runtime.DockerRuntime`` and the
server only through ``AsyncGyozaClient``; events go through one ``Outbox``
per attempt, which keeps them in order across server outages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from .client import AsyncGyozaClient, GyozaAPIError
from .outbox import MAX_LOG_MSG_BYTES, Outbox
from .resources import detect_resources
from .runtime import (
    MAX_ENV_INPUTS_BYTES,
    ContainerError,
    ContainerInfo,
    ContainerSpec,
    DockerRuntime,
    ExitStatus,
    ImagePullError,
    LogLine,
    RuntimeUnavailable,
    docker_unreachable,
)

log = logging.getLogger("gyoza.worker")

__all__ = ["WorkerOptions", "Worker", "WorkerRefused", "default_worker_id", "default_state_dir", "run_worker"]

PROTOCOL_PREFIX = "GYOZA:"
TAIL_LINES = 20
MAX_LINE_CHARS = 16_000  # one line never exceeds a LOG message (4 bytes/char worst case)
TAIL_LINE_CHARS = 1_000


def default_state_dir() -> Path:
    """Where the worker keeps its id suffix and its runs' folders."""
    env = os.environ.get("GYOZA_STATE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("gyoza", appauthor=False))


def default_worker_id(state_dir: Path | None = None) -> str:
    """``<hostname>-<suffix>``, the suffix saved once per machine.

    Stable across restarts (so a restarted worker finds and reattaches its
    containers, and ``gyoza workers`` shows one row per machine) yet distinct
    for two machines that share a hostname.
    """
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).strip("-._") or "worker"
    host = host[:100]
    state_dir = state_dir or default_state_dir()
    path = state_dir / "worker-id-suffix"
    try:
        suffix = path.read_text().strip()
        if re.fullmatch(r"[a-z0-9]{4,16}", suffix):
            return f"{host}-{suffix}"
    except OSError:
        pass
    suffix = secrets.token_hex(3)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(suffix + "\n")
    except OSError as exc:
        log.warning("cannot save the worker id suffix in %s (%s); using the bare hostname", path, exc)
        return host
    return f"{host}-{suffix}"


@dataclass
class WorkerOptions:
    """Everything ``gyoza worker`` and ``gyoza up`` can set."""

    server: str
    api_key: str | None = None
    worker_id: str | None = None
    tags: list[str] = field(default_factory=list)
    gpu_tags: dict[int, list[str]] = field(default_factory=dict)
    max_ops: int | None = None  # None: as many as the resources allow
    drain_timeout: float = 30.0
    cpu_cores: float | None = None  # None: detect
    ram_mb: int | None = None  # None: detect
    gpus: list[dict[str, Any]] | None = None  # None: detect with NVML
    heartbeat_interval: float = 5.0
    claim_wait: float = 20.0
    state_dir: Path | None = None
    docker_url: str | None = None
    docker_retry_s: float = 5.0
    stop_grace_s: float = 2.0
    log_flush_s: float = 0.25
    log_batch_lines: int = 100
    max_pending_bytes: int = 4 * 1024 * 1024
    request_timeout: float = 10.0


class WorkerRefused(Exception):
    """The server refuses this worker (wrong API key, invalid worker id): fatal at start."""


class _Backoff:
    """Exponential backoff with jitter for the worker's own loops."""

    def __init__(self, base: float = 0.2, cap: float = 5.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    async def sleep(self) -> None:
        import random

        delay = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        await asyncio.sleep(random.uniform(delay / 2, delay))

    def reset(self) -> None:
        self.failures = 0


def _parse_iso(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _signal_name(code: int) -> str | None:
    if code > 128:
        try:
            return signal.Signals(code - 128).name
        except ValueError:
            return None
    return None


class Execution:
    """One attempt of one run on this worker, from claim (or reattach) to its last event."""

    def __init__(
        self,
        worker: Worker,
        op: dict[str, Any],
        *,
        first_seq: int = 1,
        reattach: ContainerInfo | None = None,
        replay_after: float | None = None,
        send_started: bool = True,
    ) -> None:
        self.worker = worker
        self.op = op
        self.run_id: str = op["run_id"]
        self.attempt: int = int(op["attempt"])
        self.reattach = reattach
        self.replay_after = replay_after
        self.send_started = send_started
        self.container_id: str | None = reattach.id if reattach else None
        self.workdir: str | None = reattach.workdir if reattach else None
        self.outputs: dict[str, Any] = {}
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.stop_reason: str | None = None  # "cancelled" | "rejected" | "shutdown"
        self.docker_error: BaseException | None = None  # the engine went away mid-run
        self.released = False  # cleanup began: the container is no longer this execution's
        self._stop = asyncio.Event()
        self._batch: list[str] = []
        self._batch_bytes = 0
        self.outbox = Outbox(
            worker.client,
            self.run_id,
            self.attempt,
            first_seq=first_seq,
            on_rejected=lambda reason: self.request_stop("rejected"),
            max_pending_bytes=worker.options.max_pending_bytes,
        )

    # -- control ----------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop the container soon (cancel, stale attempt, worker shutdown); idempotent."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("run %s: stopping (%s)", self.run_id, reason)
        self._stop.set()

    @property
    def report(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "attempt": self.attempt}

    # -- log batching ---------------------------------------------------------------------

    def _add_line(self, text: str) -> None:
        if len(text) > MAX_LINE_CHARS:
            text = text[:MAX_LINE_CHARS] + f" …[{len(text) - MAX_LINE_CHARS} chars cut]"
        size = len(text.encode("utf-8", "replace")) + 1
        if self._batch_bytes + size > MAX_LOG_MSG_BYTES:
            self.flush_logs()
        self._batch.append(text)
        self._batch_bytes += size
        if len(self._batch) >= self.worker.options.log_batch_lines:
            self.flush_logs()

    def flush_logs(self) -> None:
        """Hand the batched lines to the outbox as one LOG event."""
        if self._batch:
            self.outbox.put_log("\n".join(self._batch))
            self._batch, self._batch_bytes = [], 0

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.worker.options.log_flush_s)
            self.flush_logs()

    def _on_line(self, line: LogLine) -> None:
        """Route one output line: protocol line (progress/outputs) or plain LOG line."""
        replaying = (
            self.replay_after is not None and line.t is not None and line.t <= self.replay_after
        )
        text = line.text
        if text.startswith(PROTOCOL_PREFIX):
            message = self._protocol(text[len(PROTOCOL_PREFIX):])
            if message is not None:
                kind = message.get("type")
                if kind == "OUTPUTS":
                    self.outputs.update(message["outputs"])  # replayed too: outputs are state
                    return
                if kind == "PROGRESS":
                    if not replaying:
                        self.flush_logs()  # keep PROGRESS in order with the lines around it
                        self.outbox.put("PROGRESS", message["msg"])
                    return
                if kind == "LOG":
                    text = str(message.get("msg", ""))
        self.tail.append(text[:TAIL_LINE_CHARS])
        if not replaying:  # already delivered before the worker restarted
            self._add_line(text)

    @staticmethod
    def _protocol(raw: str) -> dict[str, Any] | None:
        """Decode a ``GYOZA:{json}`` payload; None when it is not a valid protocol message."""
        try:
            message = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        kind = message.get("type")
        if kind == "PROGRESS":
            value = message.get("msg")
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                return None
            value = max(0, min(100, value))
            return {"type": "PROGRESS", "msg": value}
        if kind == "OUTPUTS":
            return message if isinstance(message.get("outputs"), dict) else None
        if kind == "LOG":
            return message
        return None

    async def _consume_lines(self) -> None:
        async for line in self.worker.runtime.lines(self.container_id or ""):
            self._on_line(line)

    # -- the attempt ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the attempt to its end and deliver its events; never raises."""
        self.outbox.start()
        flusher = asyncio.create_task(self._flush_periodically())
        try:
            await self._run()
        except Exception as exc:  # a bug or Docker vanished: report it, never crash the worker
            log.exception("run %s: unexpected worker error", self.run_id)
            if self.stop_reason not in ("cancelled", "rejected"):
                self._fail(f"worker error: {type(exc).__name__}: {exc}", exit_code=None)
        finally:
            flusher.cancel()
            self.flush_logs()
            cleanup = asyncio.create_task(self._cleanup())
            await self._deliver()
            await cleanup
            await self.outbox.close()

    async def _deliver(self) -> None:
        """Wait for the outbox to empty (forever while the server is down, bounded on shutdown)."""
        while not await self.outbox.wait_empty(timeout=1.0):
            if self.worker.aborting:
                return
            if self.worker.shutting_down and self.worker.shutdown_deadline is not None:
                if time.monotonic() > self.worker.shutdown_deadline:
                    log.warning("run %s: giving up on %d undelivered events at shutdown",
                                self.run_id, self.outbox.pending)
                    return

    async def _cleanup(self) -> None:
        # From here on a leftover container (Docker down) is the worker's to sweep.
        self.released = True
        runtime = self.worker.runtime
        if self.container_id:
            try:
                await runtime.remove(self.container_id)
            except Exception as exc:
                log.warning("run %s: could not remove container: %s", self.run_id, exc)
        await runtime.remove_workdir(self.workdir)

    async def _run(self) -> None:
        runtime = self.worker.runtime
        options = self.worker.options
        started_at: float
        if self.reattach is None:
            if not await self._pull():
                return
            if self._stop.is_set():
                return
            spec = ContainerSpec(
                run_id=self.run_id,
                attempt=self.attempt,
                worker_id=self.worker.worker_id,
                image=self.op["image"],
                command=self.op.get("command"),
                env=dict(self.op.get("env") or {}),
                inputs=dict(self.op.get("inputs") or {}),
                cpu_cores=float((self.op.get("constraints") or {}).get("cpu_cores", 0) or 0),
                ram_mb=int((self.op.get("constraints") or {}).get("ram_mb", 0) or 0),
                gpu_uuids=self._gpu_device_ids(),
            )
            if len(json.dumps(spec.inputs).encode()) > MAX_ENV_INPUTS_BYTES:
                self._add_line(
                    "[gyoza] the inputs are too large for the GYOZA_INPUTS variable; "
                    "read them from /gyoza/inputs.json (gyoza.op.inputs() does)"
                )
            try:
                self.container_id, self.workdir = await runtime.start(spec)
            except ContainerError as exc:
                self._fail(f"container did not start: {exc}", exit_code=None)
                return
            except (RuntimeUnavailable, aiohttp.ClientError, OSError) as exc:
                self.worker.docker_lost(exc)
                self._fail(f"container did not start: Docker is unreachable ({exc})", exit_code=None)
                return
            started_at = time.time()
            if self.send_started:
                self.outbox.put("STARTED", f"container {self.container_id[:12]} started on worker {self.worker.worker_id}")
        else:
            started_at = self.reattach.started_at or time.time()
            if self.send_started:
                self.outbox.put("STARTED", f"container {self.container_id[:12]} started on worker {self.worker.worker_id}")
            self._add_line(f"[gyoza] worker {self.worker.worker_id} restarted and reattached to container {self.container_id[:12]}")

        status, outcome = await self._supervise(started_at)
        if outcome in ("cancelled", "rejected"):
            self.outbox.drop(outcome)  # the run is over on the server; it accepts nothing more
            return
        self.flush_logs()
        if outcome == "docker-lost":
            assert self.docker_error is not None
            self.worker.docker_lost(self.docker_error)
            ended = (
                f"the engine stopped the container (exit code {status.exit_code})" if status
                else "the container's exit status is unknown"
            )
            self._fail(
                f"Docker engine connection lost while the container ran ({self.docker_error}); {ended}",
                exit_code=status.exit_code if status else None,
            )
            return
        code = status.exit_code if status else -1
        if outcome == "timeout":
            timeout_s = self.op.get("timeout_s")
            self._fail(f"exit code {code}: timed out after {timeout_s:g} s", exit_code=code, reason="TIMEOUT")
            return
        if outcome == "shutdown":
            self._fail(
                f"exit code {code}: stopped because worker {self.worker.worker_id} is shutting down "
                f"(drain timeout {options.drain_timeout:g} s)",
                exit_code=code,
            )
            return
        assert status is not None
        try:
            file_outputs = await runtime.read_outputs(self.workdir)
        except ValueError as exc:
            self._fail(f"exit code {code}: /gyoza/outputs.json is not a JSON object ({exc})", exit_code=code)
            return
        if file_outputs:
            self.outputs.update(file_outputs)
        if status.oom_killed:
            self._fail(f"exit code {code}: out of memory", exit_code=code)
        elif code != 0:
            sig = _signal_name(code)
            self._fail(f"exit code {code}: {'killed by ' + sig if sig else 'op failed'}", exit_code=code)
        else:
            self.outbox.put("COMPLETED", "exit code 0", {"outputs": self.outputs})

    def _gpu_device_ids(self) -> list[str]:
        """Docker DeviceIDs: the NVML UUIDs the server recorded, else the indices."""
        ids = list(self.op.get("gpu_ids") or [])
        uuids = list(self.op.get("gpu_uuids") or [])
        return [
            str(uuids[i]) if i < len(uuids) and uuids[i] else str(gpu_id)
            for i, gpu_id in enumerate(ids)
        ]

    async def _pull(self) -> bool:
        """Make sure the image is present; False (after reporting FAILED or a stop) otherwise."""
        pull = asyncio.create_task(
            self.worker.runtime.ensure_image(self.op["image"], lambda line: self._add_line(f"[pull] {line}"))
        )
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({pull, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not pull.done():
            pull.cancel()
            return False
        try:
            pull.result()
        except ImagePullError as exc:
            self.flush_logs()
            self._fail(f"image pull failed: {exc}", exit_code=None)
            return False
        except (RuntimeUnavailable, aiohttp.ClientError, OSError) as exc:
            self.worker.docker_lost(exc)
            self._fail(f"image pull failed: Docker is unreachable ({exc})", exit_code=None)
            return False
        return True

    async def _supervise(self, started_at: float) -> tuple[ExitStatus | None, str]:
        """Follow the container until it exits, times out or is stopped: (status, outcome)."""
        runtime = self.worker.runtime
        assert self.container_id is not None
        lines = asyncio.create_task(self._consume_lines())
        waiter = asyncio.create_task(runtime.wait(self.container_id))
        stop = asyncio.create_task(self._stop.wait())
        timeout_s = self.op.get("timeout_s")
        remaining = None if timeout_s is None else max(0.0, float(timeout_s) - (time.time() - started_at))
        done, _ = await asyncio.wait({waiter, stop}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if waiter in done:
            outcome = "exit"
        else:
            outcome = (self.stop_reason or "shutdown") if stop in done else "timeout"
            if outcome == "timeout":
                self._add_line(f"[gyoza] timeout of {float(timeout_s):g} s reached; stopping the container")
            try:
                await runtime.stop(self.container_id, self.worker.options.stop_grace_s)
            except Exception as exc:
                log.warning("run %s: stopping the container failed: %s", self.run_id, exc)
        status: ExitStatus | None = None
        try:
            status = await asyncio.wait_for(waiter, timeout=15)
        except Exception as exc:
            waiter.cancel()
            log.warning("run %s: no exit status from Docker: %s", self.run_id, exc)
            if docker_unreachable(exc):
                self.docker_error = exc
        # The log stream ends when the container exits; give it a moment to drain.
        try:
            await asyncio.wait_for(lines, timeout=5)
        except Exception:
            lines.cancel()
        if outcome == "exit" and status is not None and status.exit_code != 0:
            # A stopping engine kills its containers (SIGTERM, then SIGKILL) before it
            # goes: that exit is the engine's doing, not the op's.
            try:
                await runtime.ping(fresh=True)
            except RuntimeUnavailable as exc:
                self.docker_error = exc
        if outcome == "exit" and self.docker_error is not None:
            return status, "docker-lost"
        if status is None and outcome == "exit":
            raise RuntimeError("Docker reported no exit status for the container")
        return status, outcome

    def _fail(self, error: str, *, exit_code: int | None, reason: str = "FAILED") -> None:
        """Queue FAILED with ``error`` and the last output lines."""
        message = error
        if self.tail:
            message += "\n" + "\n".join(self.tail)
        payload: dict[str, Any] = {"error_message": message, "reason": reason}
        if exit_code is not None:
            payload["exit_code"] = exit_code
        log.info("run %s attempt %d failed: %s", self.run_id, self.attempt, error)
        self.outbox.put("FAILED", error[:1000], payload)


class Worker:
    """The agent; ``await Worker(options).run()`` until ``request_shutdown()``."""

    def __init__(self, options: WorkerOptions, *, client: AsyncGyozaClient | None = None) -> None:
        self.options = options
        state_dir = options.state_dir or default_state_dir()
        self.worker_id = options.worker_id or default_worker_id(state_dir)
        self.client = client or AsyncGyozaClient(
            options.server, api_key=options.api_key, timeout=options.request_timeout
        )
        self._own_client = client is None
        self.runtime = DockerRuntime(state_dir / "work" / self.worker_id, url=options.docker_url)
        self.resources: dict[str, Any] = {}
        self.executions: dict[str, Execution] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._shutdown = asyncio.Event()
        self.shutting_down = False
        self.shutdown_deadline: float | None = None
        self.aborting = False
        self._docker_ok = asyncio.Event()
        self._registered = False
        self._server_down = False
        self._slots_changed = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------

    def request_shutdown(self) -> None:
        """Stop claiming and drain (SIGTERM); a second call stops running ops at once."""
        if self.shutting_down:
            log.warning("second stop request: stopping running ops now")
            self.shutdown_deadline = time.monotonic()
            for execution in self.executions.values():
                execution.request_stop("shutdown")
        self.shutting_down = True
        self._shutdown.set()

    async def run(self) -> None:
        """Serve until shutdown is requested; cancelling the task stops containers without reporting."""
        background: list[asyncio.Task[None]] = []
        try:
            self.resources = await asyncio.to_thread(
                detect_resources,
                cpu_cores=self.options.cpu_cores,
                ram_mb=self.options.ram_mb,
                gpu_tags=self.options.gpu_tags,
                gpus=self.options.gpus,
            )
            log.info(
                "worker %s: %g CPU, %d MB RAM, %d GPU(s), tags %s, server %s",
                self.worker_id, self.resources["cpu_cores"], self.resources["ram_mb"],
                len(self.resources["gpus"]), self.options.tags or "none", self.options.server,
            )
            if not await self._connect_docker():
                return
            if not await self._register():
                return
            await self._reconcile()
            background = [
                asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                asyncio.create_task(self._docker_watch(), name="docker-watch"),
            ]
            claim = asyncio.create_task(self._claim_loop(), name="claim")
            await self._shutdown.wait()
            claim.cancel()
            await asyncio.gather(claim, return_exceptions=True)
            await self._drain()
        except asyncio.CancelledError:
            await self._abort()
            raise
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.runtime.close()
            if self._own_client:
                await self.client.aclose()

    async def _drain(self) -> None:
        """Let running ops finish for up to ``drain_timeout``, then stop them and report."""
        if self._tasks:
            log.info("draining: waiting up to %g s for %d running op(s)", self.options.drain_timeout, len(self._tasks))
            await asyncio.wait(list(self._tasks.values()), timeout=self.options.drain_timeout)
        # Bound the time spent delivering final events when the server is gone.
        self.shutdown_deadline = time.monotonic() + max(10.0, self.options.stop_grace_s + 5)
        for execution in list(self.executions.values()):
            execution.request_stop("shutdown")
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=60)
        log.info("worker %s stopped", self.worker_id)

    async def _abort(self) -> None:
        """Cancelled (e.g. the embedding server shuts down): stop and remove containers, report nothing."""
        self.aborting = True
        for execution in list(self.executions.values()):
            execution.request_stop("shutdown")
        tasks = list(self._tasks.values())
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.options.stop_grace_s + 8)
            for task in pending:
                task.cancel()

    # -- Docker -------------------------------------------------------------------------------

    async def _connect_docker(self) -> bool:
        """Connect to Docker, retrying; False if shutdown comes first. Says once why no work is taken."""
        announced = False
        while not self._shutdown.is_set():
            try:
                await self.runtime.connect()
                if announced:
                    log.info("Docker is reachable again; taking work")
                self._docker_ok.set()
                return True
            except RuntimeUnavailable as exc:
                if not announced:
                    log.error("not taking work: %s. Retrying every %g s.", exc, self.options.docker_retry_s)
                    announced = True
            try:
                await asyncio.wait_for(self._shutdown.wait(), self.options.docker_retry_s)
            except TimeoutError:
                pass
        return False

    def docker_lost(self, exc: BaseException) -> None:
        """An op found Docker gone: pause claiming until it answers again."""
        if self._docker_ok.is_set():
            log.error("Docker stopped answering (%s); not taking work until it is back", exc)
            self._docker_ok.clear()

    async def _docker_watch(self) -> None:
        """Ping Docker; after an outage, reconnect and sweep the containers it left behind."""
        while True:
            await asyncio.sleep(self.options.docker_retry_s)
            if self._docker_ok.is_set():
                try:
                    await self.runtime.ping(fresh=True)  # a stopping engine still answers old connections
                except RuntimeUnavailable as exc:
                    self.docker_lost(exc)
            if not self._docker_ok.is_set():
                if not await self._connect_docker():
                    return
                await self._remove_orphans()

    async def _remove_orphans(self) -> None:
        """Remove every container labelled with our id that no live execution owns.

        Runs after Docker comes back: an engine restart kills the containers
        (without live-restore) and their executions end, but their removal
        failed while the engine was down.
        """
        try:
            found = await self.runtime.list_containers(self.worker_id)
        except Exception as exc:
            if docker_unreachable(exc):
                self.docker_lost(exc)  # gone again: the watch retries, then sweeps
            else:
                log.warning("cannot list this worker's containers: %s", exc)
            return
        live = {(e.run_id, e.attempt) for e in self.executions.values() if not e.released}
        for info in found:
            if (info.run_id, info.attempt) in live:
                continue
            log.info("removing orphaned container %s (run %s attempt %d)", info.id[:12], info.run_id, info.attempt)
            await self.runtime.remove(info.id)
            await self.runtime.remove_workdir(info.workdir)

    # -- server -------------------------------------------------------------------------------

    def _running_ops(self) -> list[dict[str, Any]]:
        return [execution.report for execution in self.executions.values()]

    async def _heartbeat(self, *, with_running_ops: bool = True) -> dict[str, Any]:
        answer = await self.client.heartbeat(
            self.worker_id,
            self.resources,
            self.options.tags,
            self._running_ops() if with_running_ops else None,
        )
        self._apply_cancels(answer.get("cancel") or [])
        return answer

    def _server_unreachable(self, exc: BaseException) -> None:
        if not self._server_down:
            log.warning("server %s unreachable (%s); retrying", self.options.server, exc)
            self._server_down = True

    def _server_back(self) -> None:
        if self._server_down:
            log.info("server %s reachable again", self.options.server)
            self._server_down = False

    async def _register(self) -> bool:
        """First heartbeat, without running_ops (nothing to reconcile before reattaching)."""
        backoff = _Backoff(0.1, 5.0)
        while not self._shutdown.is_set():
            try:
                await self._heartbeat(with_running_ops=False)
                self._server_back()
                return True
            except GyozaAPIError as exc:
                if exc.status_code in (400, 401):
                    # A wrong API key or an invalid worker id: retrying cannot help.
                    raise WorkerRefused(f"the server refused this worker: {exc.detail}") from None
                self._server_unreachable(exc)
            except (httpx.TransportError, OSError) as exc:
                self._server_unreachable(exc)
            await backoff.sleep()
        return False

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_interval)
            try:
                await self._heartbeat()
                self._server_back()
            except (GyozaAPIError, httpx.TransportError, OSError) as exc:
                self._server_unreachable(exc)

    def _free_slots(self) -> int | None:
        if self.options.max_ops is None:
            return None
        return max(0, self.options.max_ops - len(self.executions))

    async def _claim_loop(self) -> None:
        backoff = _Backoff(0.2, 5.0)
        while True:
            if not self._docker_ok.is_set():
                await self._docker_ok.wait()
            free = self._free_slots()
            self._slots_changed.clear()
            claim = asyncio.create_task(
                self.client.claim(self.worker_id, wait=self.options.claim_wait, max=free)
            )
            if free == 0:
                # Full: this long-poll only watches for cancels. Abandon it as soon
                # as a slot frees (harmless: with max=0 it cannot hand out work).
                slot = asyncio.create_task(self._slots_changed.wait())
                await asyncio.wait({claim, slot}, return_when=asyncio.FIRST_COMPLETED)
                slot.cancel()
                if not claim.done():
                    claim.cancel()
                    await asyncio.gather(claim, return_exceptions=True)
                    continue
            try:
                answer = await claim
                backoff.reset()
                self._server_back()
            except GyozaAPIError as exc:
                if exc.status_code == 404:  # the server forgot us (new database): register again
                    try:
                        await self._register()
                    except WorkerRefused as refused:
                        log.error("%s", refused)
                        await backoff.sleep()
                    continue
                self._server_unreachable(exc)
                await backoff.sleep()
                continue
            except (httpx.TransportError, OSError) as exc:
                self._server_unreachable(exc)
                await backoff.sleep()
                continue
            self._apply_cancels(answer.get("cancel") or [])
            for op in answer.get("ops") or []:
                self._start(Execution(self, op))

    def _apply_cancels(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            execution = self.executions.get(run_id)
            if execution is not None and execution.stop_reason is None:
                execution.request_stop("cancelled")

    def _start(self, execution: Execution) -> None:
        if execution.run_id in self.executions:
            log.warning("run %s handed out twice; ignoring the second copy", execution.run_id)
            return
        log.info("run %s attempt %d: %s", execution.run_id, execution.attempt, execution.op.get("image"))
        self.executions[execution.run_id] = execution

        async def supervise() -> None:
            try:
                await execution.run()
            finally:
                self.executions.pop(execution.run_id, None)
                self._tasks.pop(execution.run_id, None)
                self._slots_changed.set()

        self._tasks[execution.run_id] = asyncio.create_task(supervise(), name=f"run-{execution.run_id}")

    # -- restart: find our containers --------------------------------------------------------

    async def _reconcile(self) -> None:
        """Reattach to our containers whose attempt is still ours; remove the others.

        Also deletes run folders no container refers to (a crash between
        creating the folder and the container).
        """
        try:
            found = await self.runtime.list_containers(self.worker_id)
        except Exception as exc:
            log.error("cannot list this worker's containers: %s", exc)
            found = []
        keep_dirs: set[str] = set()
        for info in found:
            run = await self._fetch_run(info.run_id)
            attempt_is_ours = (
                run is not None
                and run.get("worker_id") == self.worker_id
                and int(run.get("attempt", 0)) == info.attempt
                and run.get("state") in ("ASSIGNED", "RUNNING")
            )
            if info.started_at is None and not info.running:
                # Created but never started (a crash in between): nothing to follow, and
                # Docker would report a clean exit. Remove it; the server requeues the run
                # as LOST once our heartbeats stop listing it.
                attempt_is_ours = False
            if not attempt_is_ours or run is None:
                log.info("removing leftover container %s (run %s attempt %d is no longer ours)",
                         info.id[:12], info.run_id, info.attempt)
                await self.runtime.remove(info.id)
                await self.runtime.remove_workdir(info.workdir)
                continue
            if info.workdir:
                keep_dirs.add(str(Path(info.workdir).resolve()))
            self._start(self._reattached(run, info))
        await asyncio.to_thread(self._sweep_workdirs, keep_dirs)

    def _reattached(self, run: dict[str, Any], info: ContainerInfo) -> Execution:
        mine = [
            e for e in run.get("events") or []
            if e.get("attempt") == info.attempt and e.get("seq") is not None
        ]
        first_seq = max((int(e["seq"]) for e in mine), default=0) + 1
        replay_after = max((_parse_iso(e.get("t")) or 0.0 for e in mine), default=None)
        op = {
            "run_id": run["id"], "attempt": info.attempt, "image": run.get("image"),
            "command": run.get("command"), "env": run.get("env") or {},
            "inputs": run.get("inputs") or {}, "constraints": run.get("constraints") or {},
            "gpu_ids": run.get("gpu_ids") or [], "timeout_s": run.get("timeout_s"),
            "state": run.get("state"),
        }
        log.info("reattaching to container %s of run %s attempt %d", info.id[:12], run["id"], info.attempt)
        return Execution(
            self, op, first_seq=first_seq, reattach=info, replay_after=replay_after,
            send_started=run.get("state") == "ASSIGNED",
        )

    async def _fetch_run(self, run_id: str) -> dict[str, Any] | None:
        """The run, or None when the server does not know it; retries while unreachable."""
        backoff = _Backoff(0.2, 5.0)
        while True:
            try:
                return await self.client.get_run(run_id)
            except GyozaAPIError as exc:
                if exc.status_code in (400, 404):
                    return None
                self._server_unreachable(exc)
            except (httpx.TransportError, OSError) as exc:
                self._server_unreachable(exc)
            if self._shutdown.is_set():
                return None
            await backoff.sleep()

    def _sweep_workdirs(self, keep: set[str]) -> None:
        root = self.runtime.workdir_root
        if not root.is_dir():
            return
        for path in root.iterdir():
            if path.is_dir() and str(path.resolve()) not in keep:
                shutil.rmtree(path, ignore_errors=True)


async def run_worker(options: WorkerOptions, *, install_signal_handlers: bool = True) -> None:
    """Run a worker until SIGTERM/SIGINT (drain), as ``gyoza worker`` does."""
    worker = Worker(options)
    if install_signal_handlers:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, worker.request_shutdown)
            except (NotImplementedError, RuntimeError):
                pass
    await worker.run()
