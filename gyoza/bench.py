"""``python -m gyoza.bench`` (``make bench``): how light and quick gyoza is.

Every figure is measured against real ``gyoza server`` / ``gyoza up`` /
``gyoza worker`` processes on loopback, each with a fresh temporary
database. Load comes from separate processes (multiprocessing, httpx with
HTTP keep-alive), and the bench reports how much CPU those clients used, so
a reader can tell whether the client or the server was the limit.

It prints a table (figure, value, target, ok/MISS) and then one line of
JSON with every figure. It never fails: a figure it cannot measure (no
Docker engine, say) is ``null`` with a note, and a missed target is printed
as ``MISS``; the exit status is 0 either way. The whole run is bounded to
about five minutes.

Knobs (environment): ``GYOZA_BENCH_QUICK=1`` shortens every phase (for a
smoke test), ``GYOZA_BENCH_FILL`` the number of runs of the deep-queue
phases (default 100000), ``GYOZA_BENCH_E2E`` the number of container runs
(default 10).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil

QUICK = os.environ.get("GYOZA_BENCH_QUICK") == "1"
FILL = int(os.environ.get("GYOZA_BENCH_FILL", "2000" if QUICK else "100000"))
E2E_N = int(os.environ.get("GYOZA_BENCH_E2E", "3" if QUICK else "10"))
PHASE_S = 1.5 if QUICK else 5.0  # length of each throughput phase
FILL_BUDGET_S = 120.0  # the 100k fill stops here even if short (reported)
DEADLINE_S = 260.0  # no optional phase starts after this: the bench stays about 5 minutes

CREATE_BODY = b'{"image":"busybox","inputs":{"n":1}}'
LOG_BODY = b'{"type":"LOG","msg":"a line of output from the op, as a worker sends it"}'
JSON_HEADERS = {"content-type": "application/json"}
BIG_WORKER = {"cpu_cores": 4096, "ram_mb": 100_000_000, "gpus": []}
BENCH_IMAGE = "gyoza-bench-true:1"

T0 = time.monotonic()
LOAD_START = round(os.getloadavg()[0], 2)  # other work on the machine skews every figure


# -- results -----------------------------------------------------------------------------


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    target: str  # printed
    check: Callable[[float], bool] | None
    value: float | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "skip"
        if self.check is None:
            return ""
        return "ok" if self.check(self.value) else "MISS"


@dataclass
class Results:
    figures: dict[str, Figure] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, label: str, unit: str, target: str = "",
            check: Callable[[float], bool] | None = None) -> None:
        self.figures[key] = Figure(key, label, unit, target, check)

    def set(self, key: str, value: float | None, note: str = "") -> None:
        f = self.figures[key]
        f.value = None if value is None else round(float(value), 3)
        f.note = note
        shown = "-" if value is None else _fmt(f.value)
        print(f"  {f.label}: {shown} {f.unit} {note}".rstrip(), file=sys.stderr, flush=True)

    def skip(self, keys: list[str], why: str) -> None:
        for k in keys:
            self.set(k, None, f"skipped: {why}")
        self.notes.append(f"{', '.join(keys)}: skipped: {why}")


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def define_figures(r: Results) -> None:
    le = lambda x: (lambda v: v <= x)  # noqa: E731
    ge = lambda x: (lambda v: v >= x)  # noqa: E731
    r.add("startup_s", "server startup to /healthz (median of 5)", "s", "<= 1.0", le(1.0))
    r.add("server_idle_rss_mb", "server RSS, idle", "MB", "<= 60", le(60))
    r.add("create_runs_per_s_seq", "POST /runs, 1 client, sequential", "/s", ">= 1,000", ge(1000))
    r.add("create_runs_per_s_conc16", "POST /runs, 16 concurrent clients", "/s", ">= 1,500", ge(1500))
    r.add("create_errors_conc16", "  errors with 16 clients", "", "0", le(0))
    r.add("server_rss_after_100k_mb", "server RSS after 100,000 runs", "MB", "<= 120", le(120))
    r.add("events_per_s_seq", "POST /runs/{id}/events (LOG), sequential", "/s", ">= 1,500", ge(1500))
    r.add("webhook_ingest_ratio", "event ingest with webhook / without", "", ">= 0.8", ge(0.8))
    r.add("claim_p50_ms_100", "claim (max=1) p50, 100 PENDING", "ms", "", None)
    r.add("claim_p50_ms_100k", "claim (max=1) p50, 100,000 PENDING", "ms", "", None)
    r.add("claim_depth_ratio", "claim p50 100k / 100", "", "<= 2", le(2))
    r.add("longpoll_wake_p50_ms", "long-poll claim wake-up p50", "ms", "<= 20", le(20))
    r.add("e2e_container_s", "`true` container create->COMPLETED (gyoza up)", "s", "", None)
    r.add("docker_run_s", "`docker run --rm` same image", "s", "", None)
    r.add("e2e_overhead_ratio", "gyoza / docker run", "", "<= 1.3", le(1.3))
    r.add("worker_idle_rss_mb", "standalone worker RSS, idle", "MB", "<= 60", le(60))


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gyoza_argv() -> list[str]:
    script = Path(sys.executable).parent / "gyoza"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from gyoza.cli import main; main()"]


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> float:
    """Poll /healthz every 5 ms; the time when it first answered 200."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if c.get(url + "/healthz").status_code == 200:
                    return time.monotonic()
            except httpx.TransportError:
                pass
            time.sleep(0.005)
    raise RuntimeError(f"{url} did not become healthy in {timeout:.0f}s")


class Proc:
    """One gyoza process (server, up or worker) with its own temp folder."""

    def __init__(self, command: str, *extra: str, with_server_flags: bool = True) -> None:
        self.tmp = tempfile.mkdtemp(prefix="gyoza-bench-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = gyoza_argv() + [command]
        if with_server_flags:
            argv += ["--port", str(self.port), "--db", os.path.join(self.tmp, "gyoza.db")]
        argv += list(extra)
        self.log = open(os.path.join(self.tmp, "log.txt"), "wb")
        self.started = time.monotonic()
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        self.ps = psutil.Process(self.popen.pid)

    def healthy(self) -> float:
        return wait_healthy(self.url, self.popen) - self.started

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 1e6

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def tail(self, n: int = 2000) -> str:
        self.log.flush()
        with open(os.path.join(self.tmp, "log.txt"), "rb") as f:
            return f.read()[-n:].decode(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def running(command: str, *extra: str) -> Iterator[Proc]:
    p = Proc(command, *extra)
    try:
        p.healthy()
        yield p
    finally:
        p.stop()


# -- load generators (separate processes) -------------------------------------------------


class RawClient:
    """A minimal HTTP/1.1 keep-alive client: one socket, pre-encoded requests.

    httpx spends ~0.6-0.9 ms of CPU per request on this 2-core machine, which
    would make the load generator, not the server, the limit of a sequential
    test. This client spends ~0.05 ms; ``GYOZA_BENCH_CLIENT=httpx`` uses httpx.
    """

    def __init__(self, url: str) -> None:
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.host = host

    def request(self, method: str, path: str, content: bytes = b"") -> int:
        head = (f"{method} {path} HTTP/1.1\r\nhost: {self.host}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(content)}\r\n\r\n")
        self.sock.sendall(head.encode() + content)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        header = buf[:end].lower()
        length, i = 0, header.find(b"content-length:")
        if i >= 0:
            j = header.find(b"\r\n", i)
            length = int(header[i + 15 : j if j >= 0 else len(header)])
        need = end + 4 + length
        while len(buf) < need:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        self.buf = buf[need:]
        return int(buf[9:12])

    def close(self) -> None:
        self.sock.close()


class HttpxClient:
    def __init__(self, url: str) -> None:
        self.c = httpx.Client(base_url=url, timeout=30.0, headers=JSON_HEADERS)

    def request(self, method: str, path: str, content: bytes = b"") -> int:
        return self.c.request(method, path, content=content).status_code

    def close(self) -> None:
        self.c.close()


CLIENT = os.environ.get("GYOZA_BENCH_CLIENT", "raw")


def _load_worker(url: str, method: str, path: str, body: bytes, duration: float | None,
                 count: int | None, threads: int, ready: Any, go: Any, out: Any) -> None:
    """Runs in a child process: ``threads`` keep-alive clients, each sequential."""
    kind = HttpxClient if CLIENT == "httpx" else RawClient
    clients = [kind(url) for _ in range(threads)]
    for c in clients:  # open the connections before the clock starts
        c.request("GET", "/healthz")
    ready.put(1)
    go.wait()
    start = time.monotonic()
    cpu0 = time.process_time()
    stop_at = start + duration if duration is not None else None
    counts = [[0, 0, 0.0] for _ in clients]  # ok, errors, last finish
    lat_samples: list[float] = []
    quota = [count // threads + (1 if i < count % threads else 0) for i in range(threads)] if count else None

    def loop(i: int) -> None:
        c, mine = clients[i], counts[i]
        n = 0
        while True:
            if stop_at is not None and time.monotonic() >= stop_at:
                break
            if quota is not None and n >= quota[i]:
                break
            t = time.monotonic()
            try:
                ok = 200 <= c.request(method, path, body) < 300
            except (httpx.HTTPError, OSError, ValueError):
                ok = False
                if isinstance(c, RawClient):  # start a fresh connection
                    c.close()
                    clients[i] = c = RawClient(url)
            done = time.monotonic()
            n += 1
            mine[0 if ok else 1] += 1
            mine[2] = done
            if n % 16 == 0:
                lat_samples.append(done - t)

    if threads == 1:
        loop(0)
    else:
        ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    cpu = time.process_time() - cpu0
    out.put({
        "ok": sum(c[0] for c in counts),
        "err": sum(c[1] for c in counts),
        "start": start,
        "end": max(c[2] for c in counts) or time.monotonic(),
        "cpu_s": cpu,
        "lat": lat_samples,
    })
    for c in clients:
        c.close()


@dataclass
class LoadResult:
    ok: int
    err: int
    wall_s: float
    rate: float
    client_cpu_share: float  # client CPU seconds / wall seconds (1.0 = one core busy)
    server_cpu_share: float
    lat_p50_ms: float


def load(server: Proc, method: str, path: str, body: bytes, *, procs: int, threads: int,
         duration: float | None = None, count: int | None = None) -> LoadResult:
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    per_proc = None
    if count is not None:
        per_proc = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    ps = [
        ctx.Process(
            target=_load_worker,
            args=(server.url, method, path, body, duration,
                  per_proc[i] if per_proc else None, threads, ready, go, out),
            daemon=True,
        )
        for i in range(procs)
    ]
    for p in ps:
        p.start()
    for _ in ps:
        ready.get(timeout=60)
    cpu0 = server.cpu_s()
    go.set()
    results = [out.get(timeout=(duration or 0) + 600) for _ in ps]
    cpu1 = server.cpu_s()
    for p in ps:
        p.join(10)
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    wall = max(end - start, 1e-9)
    ok = sum(r["ok"] for r in results)
    lat = [x for r in results for x in r["lat"]]
    return LoadResult(
        ok=ok,
        err=sum(r["err"] for r in results),
        wall_s=wall,
        rate=ok / wall,
        client_cpu_share=sum(r["cpu_s"] for r in results) / wall,
        server_cpu_share=(cpu1 - cpu0) / wall,
        lat_p50_ms=statistics.median(lat) * 1000 if lat else float("nan"),
    )


def merge(parts: list[LoadResult]) -> LoadResult:
    wall = sum(p.wall_s for p in parts)
    return LoadResult(
        ok=sum(p.ok for p in parts),
        err=sum(p.err for p in parts),
        wall_s=wall,
        rate=sum(p.ok for p in parts) / wall,
        client_cpu_share=sum(p.client_cpu_share * p.wall_s for p in parts) / wall,
        server_cpu_share=sum(p.server_cpu_share * p.wall_s for p in parts) / wall,
        lat_p50_ms=statistics.median(p.lat_p50_ms for p in parts),
    )


def describe(lr: LoadResult) -> str:
    return (f"({lr.ok:,} in {lr.wall_s:.1f}s, {lr.err} errors, p50 {lr.lat_p50_ms:.2f} ms; "
            f"CPU: server {lr.server_cpu_share:.0%} of a core, clients {lr.client_cpu_share:.0%})")


# -- API helpers (in this process, for setup and latency probes) ---------------------------


def api(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60.0, headers=JSON_HEADERS)


def check(resp: httpx.Response) -> Any:
    if resp.is_error:
        raise RuntimeError(f"{resp.request.method} {resp.request.url.path}: "
                           f"{resp.status_code} {resp.text[:300]}")
    return resp.json()


def heartbeat(c: httpx.Client, worker_id: str, running: list[dict[str, Any]] | None = None) -> None:
    body: dict[str, Any] = {"worker_id": worker_id, "resources": BIG_WORKER, "tags": []}
    if running is not None:
        body["running_ops"] = running
    check(c.post("/workers/heartbeat", json=body))


def assigned_run(c: httpx.Client, worker_id: str, extra: dict[str, Any] | None = None) -> str:
    """A run claimed by ``worker_id`` (ASSIGNED), ready to take events."""
    run = check(c.post("/runs", json={"image": "busybox", "inputs": {}, **(extra or {})}))
    got = check(c.post(f"/workers/{worker_id}/claim", params={"max": 100}))
    assert run["id"] in [op["run_id"] for op in got["ops"]], "the claim did not hand out the new run"
    return run["id"]


def claim_p50_ms(c: httpx.Client, worker_id: str, samples: int) -> float:
    """Median latency of claim max=1, keeping the queue depth and the worker's load constant.

    Each sample: claim one run (timed), cancel it, heartbeat without it (the
    server releases its reservation) and create one run to refill the queue.
    """
    heartbeat(c, worker_id, running=[])
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        got = check(c.post(f"/workers/{worker_id}/claim", params={"max": 1}))
        times.append(time.perf_counter() - t)
        for op in got["ops"]:
            check(c.patch(f"/runs/{op['run_id']}", json={"state": "CANCELLED"}))
        heartbeat(c, worker_id, running=[])
        check(c.post("/runs", content=CREATE_BODY))
    return statistics.median(times) * 1000


def deep_queue_fill(server: Proc, n: int, r: Results) -> int:
    """Create ``n`` runs with 16 concurrent clients, bounded by FILL_BUDGET_S."""
    done = 0
    chunk = 10_000
    t0 = time.monotonic()
    while done < n and time.monotonic() - t0 < FILL_BUDGET_S:
        lr = load(server, "POST", "/runs", CREATE_BODY, procs=4, threads=4, count=min(chunk, n - done))
        done += lr.ok
    r.extra["fill_runs"] = done
    r.extra["fill_s"] = round(time.monotonic() - t0, 1)
    return done


# -- phases ---------------------------------------------------------------------------------------


def phase_startup(r: Results) -> None:
    print("startup and idle memory", file=sys.stderr)
    times = []
    for i in range(5):
        p = Proc("server")
        try:
            times.append(p.healthy())
            if i == 0:
                time.sleep(2.0)  # idle: let start-up garbage settle
                r.set("server_idle_rss_mb", p.rss_mb())
        finally:
            p.stop()
    r.set("startup_s", statistics.median(times), f"(runs: {', '.join(f'{t:.2f}' for t in times)})")


def phase_throughput(r: Results) -> None:
    print("runs: claim at depth 100, create throughput, 100k fill, claim at depth 100k", file=sys.stderr)
    with running("server") as s:
        # Claim latency with 100 PENDING runs, then (below) with 100,000, on
        # the same server and worker.
        samples = 15 if QUICK else 100
        with api(s.url) as c:
            for _ in range(100):
                check(c.post("/runs", content=CREATE_BODY))
            r.set("claim_p50_ms_100", claim_p50_ms(c, "bench-claim", samples))
        cancelled = samples  # each claim sample cancels the run it got
        lr = load(s, "POST", "/runs", CREATE_BODY, procs=1, threads=1, duration=PHASE_S)
        r.set("create_runs_per_s_seq", lr.rate, describe(lr))
        r.extra["create_seq_client_cpu_share"] = round(lr.client_cpu_share, 2)
        lr = load(s, "POST", "/runs", CREATE_BODY, procs=4, threads=4, duration=PHASE_S)
        r.set("create_runs_per_s_conc16", lr.rate, describe(lr) + " [4 procs x 4 clients]")
        r.set("create_errors_conc16", lr.err)
        r.extra["create_conc16_client_cpu_share"] = round(lr.client_cpu_share, 2)
        created = _count_runs(s.url) - cancelled
        if created < FILL:
            deep_queue_fill(s, FILL - created, r)
        depth = _count_runs(s.url) - cancelled  # PENDING runs
        r.extra["deep_queue_pending"] = depth
        time.sleep(1.0)
        note = "" if depth >= FILL else f"(only {depth:,} runs created in the time budget)"
        r.set("server_rss_after_100k_mb", s.rss_mb(), note)
        with api(s.url) as c:
            c100k = claim_p50_ms(c, "bench-claim", samples)
        r.set("claim_p50_ms_100k", c100k, f"(depth {depth:,})")
    r.extra["_c100k"] = c100k


def _count_runs(url: str) -> int:
    """How many runs exist: the cursor of GET /runs is the run's dense row number."""
    with api(url) as c:
        newest = check(c.get("/runs", params={"limit": 2}))
        cur = newest.get("next_cursor")
        return int(cur) + 1 if cur is not None else len(newest["runs"])


def phase_small_server(r: Results) -> None:
    print("events, webhooks, long-poll wake-up", file=sys.stderr)
    receiver = WebhookReceiver()
    with running("server") as s, api(s.url) as c:
        heartbeat(c, "bench-w")
        # long-poll wake-up: the queue is empty, so the claim waits.
        samples = 5 if QUICK else 20
        wakes = []
        for _ in range(samples):
            got: dict[str, float] = {}

            def poll(got: dict[str, float] = got) -> None:
                with api(s.url) as pc:
                    check(pc.post("/workers/bench-w/claim", params={"wait": 20, "max": 1}))
                    got["t"] = time.monotonic()

            th = threading.Thread(target=poll)
            th.start()
            time.sleep(0.15)  # the claim is now parked
            t0 = time.monotonic()
            check(c.post("/runs", content=CREATE_BODY))
            th.join(30)
            if "t" in got:
                wakes.append((got["t"] - t0) * 1000)
        r.set("longpoll_wake_p50_ms", statistics.median(wakes) if wakes else None,
              f"({len(wakes)} samples, from sending POST /runs; includes that request)")

        # Events with and without a webhook, in alternating slices so that a
        # change in the machine's load hits both alike. The webhook run lives
        # on a second server, frozen (SIGSTOP) while the plain run is measured,
        # so its sender's backlog does not slow the plain figure down.
        receiver.start()
        hooked_server = Proc("server")
        try:
            hooked_server.healthy()
            plain_run = assigned_run(c, "bench-w")
            delivery = {"url": receiver.url, "events": ["LOG"]}
            with api(hooked_server.url) as hc:
                heartbeat(hc, "bench-w")
                hook_run = assigned_run(hc, "bench-w", {"event_delivery": delivery})
            plain, hooked = [], []
            for _ in range(3):
                hooked_server.ps.suspend()
                try:
                    plain.append(load(s, "POST", f"/runs/{plain_run}/events", LOG_BODY,
                                      procs=1, threads=1, duration=PHASE_S / 2))
                finally:
                    hooked_server.ps.resume()
                hooked.append(load(hooked_server, "POST", f"/runs/{hook_run}/events", LOG_BODY,
                                   procs=1, threads=1, duration=PHASE_S / 2))
            sent = sum(x.ok for x in hooked)
        finally:
            hooked_server.stop()
            receiver.stop()
        p_rate = sum(x.ok for x in plain) / sum(x.wall_s for x in plain)
        h_rate = sent / sum(x.wall_s for x in hooked)
        r.set("events_per_s_seq", p_rate, describe(merge(plain)))
        r.extra["webhook_events_per_s"] = round(h_rate, 1)
        r.extra["webhooks_received_during_bench"] = receiver.count
        r.set("webhook_ingest_ratio", h_rate / p_rate,
              f"({h_rate:,.0f}/s with a LOG webhook; the receiver got {receiver.count:,} of {sent:,} "
              "meanwhile: one request in flight per run, by design)")


class WebhookReceiver:
    """A local webhook endpoint answering 204 (a thread: it only counts)."""

    def __init__(self) -> None:
        self.count = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("content-length") or 0)
                self.rfile.read(n)
                outer.count += 1
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def docker_available() -> str | None:
    """None when a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        out = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                             capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if out.returncode != 0:
        return "no Docker engine reachable (" + (out.stderr.strip().splitlines() or ["?"])[-1][:120] + ")"
    return None


def build_true_image() -> None:
    """A tiny local image whose command is a static `true` (no registry needed)."""
    tmp = tempfile.mkdtemp(prefix="gyoza-bench-img-")
    try:
        src = Path(tmp) / "true.c"
        src.write_text("int main(void) { return 0; }\n")
        binary = Path(tmp) / "true"
        cc = shutil.which("cc") or shutil.which("gcc")
        built = False
        if cc:
            built = subprocess.run([cc, "-static", "-Os", "-s", "-o", str(binary), str(src)],
                                   capture_output=True).returncode == 0
        if not built:
            bb = shutil.which("busybox")
            if bb is None:
                raise RuntimeError("needs a C compiler (static) or a static busybox to build the image")
            shutil.copy(bb, binary)
            (Path(tmp) / "Dockerfile").write_text(
                'FROM scratch\nCOPY true /bin/busybox\nCMD ["/bin/busybox", "true"]\n')
        else:
            (Path(tmp) / "Dockerfile").write_text('FROM scratch\nCOPY true /true\nCMD ["/true"]\n')
        out = subprocess.run(["docker", "build", "-q", "-t", BENCH_IMAGE, tmp],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"docker build failed: {out.stderr.strip()[-300:]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def has_command(name: str) -> bool:
    out = subprocess.run(gyoza_argv() + [name, "--help"], capture_output=True, timeout=60)
    return out.returncode == 0


def phase_worker_rss(r: Results) -> None:
    print("standalone worker idle memory", file=sys.stderr)
    if not has_command("worker"):
        r.skip(["worker_idle_rss_mb"], "this gyoza has no `gyoza worker` command yet")
        return
    state = tempfile.mkdtemp(prefix="gyoza-bench-wstate-")
    with running("server") as s:
        w = Proc("worker", "--server", s.url, "--worker-id", "bench-idle",
                 "--state-dir", state, with_server_flags=False)
        try:
            deadline = time.monotonic() + 30
            with api(s.url) as c:
                while time.monotonic() < deadline:
                    if w.popen.poll() is not None:
                        raise RuntimeError(f"worker exited: {w.tail(500)}")
                    if any(x["worker_id"] == "bench-idle" for x in check(c.get("/workers"))):
                        break
                    time.sleep(0.1)
                else:
                    raise RuntimeError("worker never heartbeated")
            time.sleep(3.0)
            r.set("worker_idle_rss_mb", w.rss_mb())
        finally:
            w.stop()
            shutil.rmtree(state, ignore_errors=True)


def phase_e2e(r: Results) -> None:
    print("end to end: a `true` container through gyoza up vs docker run", file=sys.stderr)
    keys = ["e2e_container_s", "docker_run_s", "e2e_overhead_ratio"]
    why = docker_available()
    if why:
        r.skip(keys, why)
        return
    if not has_command("up"):
        r.skip(keys, "this gyoza has no `gyoza up` command yet")
        return
    build_true_image()

    def docker_once() -> float:
        t = time.monotonic()
        out = subprocess.run(["docker", "run", "--rm", BENCH_IMAGE], capture_output=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"docker run failed: {out.stderr[-300:]!r}")
        return time.monotonic() - t

    docker_once()  # warm-up
    docker_times = [docker_once() for _ in range(E2E_N)]

    state = tempfile.mkdtemp(prefix="gyoza-bench-up-")
    with running("up", "--worker-id", "bench-up", "--state-dir", state) as s, api(s.url) as c:
        deadline = time.monotonic() + 30
        while not check(c.get("/workers")) and time.monotonic() < deadline:
            time.sleep(0.05)

        def gyoza_once() -> float:
            t = time.monotonic()
            run = check(c.post("/runs", json={"image": BENCH_IMAGE, "inputs": {}}))
            after, state_now = 0, "PENDING"
            while state_now not in ("COMPLETED", "FAILED", "CANCELLED"):
                evs = check(c.get(f"/runs/{run['id']}/events", params={"after": after, "wait": 25}))
                for e in evs["events"]:
                    after, state_now = e["id"], e["state"]
                if time.monotonic() - t > 120:
                    raise RuntimeError("container run took over 120 s")
            took = time.monotonic() - t
            if state_now != "COMPLETED":
                detail = check(c.get(f"/runs/{run['id']}"))
                raise RuntimeError(f"run ended {state_now}: {detail.get('error')}")
            return took

        gyoza_once()  # warm-up
        gyoza_times = [gyoza_once() for _ in range(E2E_N)]
    shutil.rmtree(state, ignore_errors=True)
    g, d = statistics.median(gyoza_times), statistics.median(docker_times)
    r.set("e2e_container_s", g, f"(median of {len(gyoza_times)})")
    r.set("docker_run_s", d, f"(median of {len(docker_times)})")
    r.set("e2e_overhead_ratio", g / d)


# -- main -------------------------------------------------------------------------------------


def print_table(r: Results) -> None:
    rows = [("figure", "value", "target", "")]
    for f in r.figures.values():
        unit = f" {f.unit}" if f.unit and f.value is not None else ""
        rows.append((f.label, _fmt(f.value) + unit, f.target, f.verdict))
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    line = "  ".join("-" * x for x in w)
    print()
    for i, row in enumerate(rows):
        print(f"{row[0]:<{w[0]}}  {row[1]:>{w[1]}}  {row[2]:<{w[2]}}  {row[3]}".rstrip())
        if i == 0:
            print(line)
    for n in r.notes:
        print(f"note: {n}")
    print(f"machine: {machine()}; 1-minute load average {LOAD_START} at start, "
          f"{os.getloadavg()[0]:.2f} at the end (above ~0.5 other work is sharing the CPUs)")


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    return f"{model or 'unknown CPU'}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


def main() -> int:
    r = Results()
    define_figures(r)
    print(f"gyoza bench on {machine()}", file=sys.stderr, flush=True)
    phases: list[tuple[Callable[[Results], None], list[str]]] = [
        (phase_startup, ["startup_s", "server_idle_rss_mb"]),
        (phase_small_server, ["longpoll_wake_p50_ms", "events_per_s_seq", "webhook_ingest_ratio"]),
        (phase_throughput, ["claim_p50_ms_100", "create_runs_per_s_seq", "create_runs_per_s_conc16",
                            "create_errors_conc16", "server_rss_after_100k_mb", "claim_p50_ms_100k"]),
        (phase_worker_rss, ["worker_idle_rss_mb"]),
        (phase_e2e, ["e2e_container_s", "docker_run_s", "e2e_overhead_ratio"]),
    ]
    for fn, keys in phases:
        if time.monotonic() - T0 > DEADLINE_S:
            r.skip([k for k in keys if r.figures[k].value is None], "the bench's time budget ran out")
            continue
        try:
            fn(r)
        except Exception as exc:  # a broken phase must not hide the others
            missing = [k for k in keys if r.figures[k].value is None]
            r.skip(missing, f"{type(exc).__name__}: {str(exc)[:200]}")
    c100, c100k = r.figures["claim_p50_ms_100"].value, r.extra.pop("_c100k", None)
    if c100 and c100k:
        r.set("claim_depth_ratio", c100k / c100)
    elif r.figures["claim_depth_ratio"].value is None:
        r.skip(["claim_depth_ratio"], "a claim figure is missing")
    r.extra["machine"] = machine()
    r.extra["loadavg_1m_start_end"] = [LOAD_START, round(os.getloadavg()[0], 2)]
    r.extra["bench_s"] = round(time.monotonic() - T0, 1)
    print_table(r)
    out: dict[str, Any] = {k: f.value for k, f in r.figures.items()}
    out.update(r.extra)
    print(json.dumps(out, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # never fail the build
        print(f"bench error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(json.dumps({"error": str(exc)}))
        sys.exit(0)
