"""The webhook sender: POSTs the outbox (``deliveries`` rows) to receivers.

Rows are written by the store in the same transaction as their event, so a
delivery exists exactly when its event does, and survives crashes. This task
only reads due rows, sends them and records each outcome:

- Order per run: the store hands out only the head of each run's PENDING
  queue, and a run with a request in flight is left out of the next fetch
  until that request's outcome is recorded, so event n+1 is never sent
  before event n is DELIVERED or FAILED.
- Concurrency across runs, at most ``webhook_concurrency`` requests in flight.
- At least once: a request whose outcome is not recorded (crash, shutdown)
  is sent again after restart, with the same ``webhook-id`` so receivers can
  deduplicate.
- Outcome: 2xx delivered; 410 gives up at once; anything else (other
  status, timeout, connection error) is retried after 1, 2, 4... x
  ``webhook_backoff_s`` (+-20 % jitter, capped at ``webhook_max_backoff_s``,
  never sooner than a ``Retry-After``) until ``max_attempts``, then FAILED.
- No polling: the loop sleeps until ``wake()`` (the service calls it after
  every write that added events) or until the next retry falls due.
- The API comes first: while events keep arriving, due deliveries are
  looked for at most every ``BUSY_FILL_INTERVAL_S`` (a request costs the
  server more CPU than ingesting an event, and both share one event loop);
  a backlog drains at full speed as soon as ingestion pauses.

Logs carry the URL and the outcome only, never the secret or a signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from urllib.parse import urlsplit, urlunsplit

import httpx

from .config import ServerConfig
from .store import DeliveryJob, Store
from .webhooks import sign


def _safe_url(url: str) -> str:
    """The URL for logs: no user:password, query string or fragment (they may hold tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))

log = logging.getLogger("gyoza.webhooks")

USER_AGENT = "gyoza-webhooks/1"
MAX_RESPONSE_BYTES = 64 * 1024  # read (and drop) at most this much of an answer
RECORD_RETRY_S = 1.0
# The API comes first: while webhook events keep arriving (one in the last BUSY_S),
# the sender looks for due deliveries at most every BUSY_FILL_INTERVAL_S, so
# the requests it sends do not slow ingestion; a backlog drains when it is quiet.
BUSY_S = 0.02
BUSY_FILL_INTERVAL_S = 0.05


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before the retry that follows failed attempt number ``attempts`` (1-based)."""
    jitter = (rng or random).uniform(0.8, 1.2)
    return min(base * (2 ** min(attempts - 1, 62)) * jitter, cap)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


class WebhookSender:
    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.config = config
        self.concurrency = max(1, config.webhook_concurrency)
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # run id -> its one request
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._last_event = 0.0  # monotonic time of the last wake() (events written)
        self._last_fill = 0.0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="gyoza-webhooks")

    def _http(self) -> httpx.AsyncClient:
        # Made on first use: building its TLS context costs ~80 ms of CPU and
        # some memory, which a server without webhooks need not pay at start.
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.config.webhook_timeout),
            limits=httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            ),
            follow_redirects=False,
            headers={"user-agent": USER_AGENT},
        )

    async def stop(self) -> None:
        """Stop sending. Requests cut short stay PENDING and are sent again after restart."""
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        self._in_flight.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """New deliveries may exist (called on the server's event loop)."""
        self._last_event = time.monotonic()
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            now = time.monotonic()
            if now - self._last_event < BUSY_S:
                pause = self._last_fill + BUSY_FILL_INTERVAL_S - now
                if pause > 0:
                    await asyncio.sleep(pause)
            self._last_fill = time.monotonic()
            self._wake.clear()  # before reading, so a wake-up during the read is kept
            try:
                timeout = await self._fill()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook sender: reading the outbox failed; retrying in 1s")
                timeout = 1.0
            if timeout is None or timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)

    async def _fill(self) -> float | None:
        """Start every due delivery there is room for; return how long to sleep (None: until woken)."""
        free = self.concurrency - len(self._in_flight)
        started = 0
        if free > 0:
            for job in await self.store.due_deliveries(free, self._in_flight.keys()):
                if job.run_id in self._in_flight:
                    continue
                self._in_flight[job.run_id] = asyncio.create_task(
                    self._deliver(job), name=f"gyoza-webhook-{job.run_id}"
                )
                started += 1
        if len(self._in_flight) >= self.concurrency:
            return None  # a finishing request wakes the loop
        nxt = await self.store.next_delivery_at(self._in_flight.keys())
        if nxt is None:
            return None
        delay = nxt - time.time()
        if delay <= 0 and not started:
            # Due yet not handed out (e.g. a row whose run lost its target):
            # do not spin on it.
            return 0.05
        return max(delay, 0.0)

    # -- one request ---------------------------------------------------------------------

    async def _deliver(self, job: DeliveryJob) -> None:
        try:
            outcome = await self._send(job)
            while True:
                try:
                    await self.store.record_delivery(job.id, **outcome)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhook sender: cannot record delivery %d; retrying", job.id)
                    await asyncio.sleep(RECORD_RETRY_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook sender: delivery %d of run %s failed unexpectedly", job.id, job.run_id)
        finally:
            self._in_flight.pop(job.run_id, None)
            self._wake.set()

    async def _send(self, job: DeliveryJob) -> dict:
        client = self._http()
        timestamp = int(time.time())
        headers = httpx.Headers(job.headers)
        headers["content-type"] = "application/json"
        headers["webhook-id"] = job.webhook_id
        headers["webhook-timestamp"] = str(timestamp)
        if job.secret:
            headers["webhook-signature"] = sign(job.secret, job.webhook_id, timestamp, job.body)
        attempt = job.attempts + 1
        status: int | None = None
        retry_after: float | None = None
        try:
            async with asyncio.timeout(self.config.webhook_timeout):
                async with client.stream("POST", job.url, content=job.body, headers=headers) as resp:
                    status = resp.status_code
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
                    read = 0
                    async for chunk in resp.aiter_raw():
                        read += len(chunk)
                        if read > MAX_RESPONSE_BYTES:
                            break
            error = None
        except (TimeoutError, httpx.TimeoutException):
            error = f"no answer within {self.config.webhook_timeout:g}s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        if status is not None:
            error = f"HTTP {status}"
        if status is not None and 200 <= status < 300:
            log.info("webhook %s -> %d (run %s event %d)", _safe_url(job.url), status, job.run_id, job.event_id)
            return self._outcome(delivered=True, status=status)
        if status == 410:
            log.warning("webhook %s -> 410 Gone: giving up on run %s event %d",
                        _safe_url(job.url), job.run_id, job.event_id)
            return self._outcome(give_up=True, status=status, error="HTTP 410 Gone: receiver asked to stop")
        if attempt >= job.max_attempts:
            log.warning("webhook %s -> %s: FAILED after %d attempt(s) (run %s event %d)",
                        _safe_url(job.url), error, attempt, job.run_id, job.event_id)
            return self._outcome(give_up=True, status=status, error=error)
        delay = backoff_delay(attempt, self.config.webhook_backoff_s, self.config.webhook_max_backoff_s)
        if retry_after is not None:
            delay = min(max(delay, retry_after), self.config.webhook_max_backoff_s)
        log.info("webhook %s -> %s: retry %d/%d in %.1fs (run %s event %d)",
                 _safe_url(job.url), error, attempt + 1, job.max_attempts, delay, job.run_id, job.event_id)
        return self._outcome(status=status, error=error, next_attempt_at=time.time() + delay)

    @staticmethod
    def _outcome(
        *,
        delivered: bool = False,
        give_up: bool = False,
        status: int | None = None,
        error: str | None = None,
        next_attempt_at: float | None = None,
    ) -> dict:
        return {
            "delivered": delivered,
            "give_up": give_up,
            "status_code": status,
            "error": error,
            "next_attempt_at": next_attempt_at,
        }
