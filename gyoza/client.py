"""HTTP clients for the gyoza API: ``GyozaClient`` and its async twin.

Every method of the reference client exists with the same signature and
behaviour (non-2xx raises ``httpx.HTTPStatusError``). Each call is written
once, in ``_Calls``, as a request description; the sync and async classes
differ only in how they send it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

__all__ = ["GyozaClient", "AsyncGyozaClient", "GyozaAPIError"]


class GyozaAPIError(httpx.HTTPStatusError):
    """A non-2xx answer; ``code`` and ``detail`` come from the server's error body."""

    def __init__(self, response: httpx.Response) -> None:
        code, detail = "http_error", response.text[:500]
        try:
            body = response.json()
            if isinstance(body, dict):
                code = str(body.get("error", code))
                detail = str(body.get("detail", detail))
        except ValueError:
            pass
        self.code = code
        self.detail = detail
        self.status_code = response.status_code
        super().__init__(
            f"{response.status_code} {code}: {detail}",
            request=response.request,
            response=response,
        )


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise GyozaAPIError(response)
    return response


def _json(response: httpx.Response) -> Any:
    return _check(response).json()


def _params(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


class _Calls:
    """Every API call, described once; ``_call`` is sync or async in subclasses."""

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        result: Callable[[httpx.Response], Any] = _json,
        timeout: float | None = None,
    ) -> Any:
        raise NotImplementedError

    # -- definitions -----------------------------------------------------------

    def upsert_definition(self, op_dict: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an OpDefinition (201 new, 200 replaced)."""
        return self._call("POST", "/definitions", json=op_dict)

    def get_definition(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Fetch one version of a definition, or the latest when ``version`` is None."""
        return self._call("GET", f"/definitions/{name}", params=_params(version=version or None))

    def list_definitions(self) -> list[dict[str, Any]]:
        """Every definition, every version."""
        return self._call("GET", "/definitions")

    # -- runs ---------------------------------------------------------------------

    def create_run(
        self,
        image: str,
        inputs: dict[str, Any],
        *,
        priority: int = 5,
        constraints: dict[str, Any] | None = None,
        retry_policy: dict[str, Any] | None = None,
        event_delivery: dict[str, Any] | None = None,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Create an ad-hoc OpRun without a definition."""
        payload: dict[str, Any] = {"image": image, "inputs": inputs, "priority": priority}
        optional = {
            "constraints": constraints,
            "retry_policy": retry_policy,
            "event_delivery": event_delivery,
            "command": command,
            "env": env,
            "timeout_s": timeout_s,
        }
        payload.update({k: v for k, v in optional.items() if v is not None})
        return self._call("POST", "/runs", json=payload)

    def create_run_from_definition(
        self,
        name: str,
        inputs: dict[str, Any],
        *,
        version: str | None = None,
        priority: int = 5,
        event_delivery: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create an OpRun from a definition (latest version unless ``version``).

        ``event_delivery`` overrides the definition's webhook settings for this run.
        """
        body: dict[str, Any] = {"inputs": inputs, "priority": priority}
        if event_delivery is not None:
            body["event_delivery"] = event_delivery
        return self._call(
            "POST",
            f"/definitions/{name}/runs",
            params=_params(version=version or None),
            json=body,
        )

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run with its ``events`` and ``attempts``."""
        return self._call("GET", f"/runs/{run_id}")

    def list_runs(
        self,
        *,
        state: str | None = None,
        definition: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of runs, newest first: ``{"runs": [...], "next_cursor": ...}``."""
        params = _params(state=state, definition=definition, limit=limit, cursor=cursor)
        return self._call("GET", "/runs", params=params)

    def update_run(
        self,
        run_id: str,
        *,
        state: str | None = None,
        outputs: dict[str, Any] | None = None,
        priority: int | None = None,
    ) -> dict[str, Any]:
        """PATCH state (acts as that event), outputs or priority."""
        payload = _params(state=state, outputs=outputs, priority=priority)
        return self._call("PATCH", f"/runs/{run_id}", json=payload)

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        """Cancel a run; its worker learns it through ``cancel`` and stops the container."""
        return self.update_run(run_id, state="CANCELLED")

    def retry_run(self, run_id: str) -> dict[str, Any]:
        """Reopen a FAILED or CANCELLED run as a new attempt, claimable at once."""
        return self._call("POST", f"/runs/{run_id}/retry")

    def add_event(
        self,
        run_id: str,
        event_type: str,
        msg: str | int,
        payload: dict[str, Any] | None = None,
        *,
        attempt: int | None = None,
        seq: int | None = None,
    ) -> dict[str, Any]:
        """Append an event; ``attempt`` fences stale workers, ``seq`` makes resends safe."""
        body: dict[str, Any] = {"type": event_type, "msg": msg}
        if payload is not None:
            body["payload"] = payload
        if attempt is not None:
            body["attempt"] = attempt
        if seq is not None:
            body["seq"] = seq
        return self._call("POST", f"/runs/{run_id}/events", json=body)

    def poll_events(
        self,
        run_id: str,
        after: int | None = None,
        *,
        wait: float | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """Events after ``after``; ``wait`` long-polls (server clamps it to 25 s)."""
        return self._call(
            "GET",
            f"/runs/{run_id}/events",
            params=_params(after=after, wait=wait, limit=limit),
            timeout=None if wait is None else wait + 30.0,
        )

    def get_attempts(self, run_id: str) -> list[dict[str, Any]]:
        """Every attempt of the run, oldest first."""
        return self._call("GET", f"/runs/{run_id}/attempts")

    def list_deliveries(self, run_id: str) -> list[dict[str, Any]]:
        """Webhook deliveries of a run's events."""
        return self._call("GET", f"/runs/{run_id}/deliveries")

    def redeliver(self, run_id: str, delivery_id: int) -> dict[str, Any]:
        """Requeue a failed webhook delivery."""
        return self._call("POST", f"/runs/{run_id}/deliveries/{delivery_id}/redeliver")

    # -- workers -------------------------------------------------------------------

    def list_workers(self) -> list[dict[str, Any]]:
        """Every worker the server has seen."""
        return self._call("GET", "/workers")

    def heartbeat(
        self,
        worker_id: str,
        resources: dict[str, Any],
        tags: list[str] | None = None,
        running_ops: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Register or refresh a worker; the answer's ``cancel`` lists runs to stop."""
        payload: dict[str, Any] = {"worker_id": worker_id, "resources": resources, "tags": tags or []}
        if running_ops is not None:
            payload["running_ops"] = running_ops
        return self._call("POST", "/workers/heartbeat", json=payload)

    def claim_ops(self, worker_id: str) -> list[dict[str, Any]]:
        """Claim every queued run that fits now (no waiting); returns the ops."""
        return self._call(
            "POST", f"/workers/{worker_id}/claim", result=lambda r: _json(r).get("ops", [])
        )

    def claim(
        self, worker_id: str, *, wait: float | None = None, max: int | None = None
    ) -> dict[str, Any]:
        """Claim with long-poll: ``{"ops": [...], "cancel": [...]}``."""
        return self._call(
            "POST",
            f"/workers/{worker_id}/claim",
            params=_params(wait=wait, max=max),
            timeout=None if wait is None else wait + 30.0,
        )

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


class GyozaClient(_Calls):
    """Blocking client.

    Parameters
    ----------
    base_url: the server, e.g. ``"http://localhost:5555"``.
    api_key: sent as ``X-API-Key`` on every request.
    timeout: per-request timeout in seconds (long-polls extend it by their wait).
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout)

    def _call(self, method, path, *, params=None, json=None, result=_json, timeout=None):
        extra = {} if timeout is None else {"timeout": timeout}
        response = self._http.request(method, path, params=params, json=json, **extra)
        return result(response)

    def close(self) -> None:
        """Close the underlying HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> GyozaClient:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()


class AsyncGyozaClient(_Calls):
    """The same methods as ``GyozaClient``, as coroutines."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout
        )

    async def _call(self, method, path, *, params=None, json=None, result=_json, timeout=None):
        extra = {} if timeout is None else {"timeout": timeout}
        response = await self._http.request(method, path, params=params, json=json, **extra)
        return result(response)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncGyozaClient:
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.aclose()
