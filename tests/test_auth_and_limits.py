"""API keys, body limits and the error shape for bad requests."""

from __future__ import annotations

import httpx
import pytest
from starlette.routing import Route

from gyoza.config import ServerConfig
from gyoza.server import build_app
from gyoza.testing import GyozaTestServer

OPEN_PATHS = {"/healthz", "/openapi.json"}


def app_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the app, read from the app itself."""
    app = build_app(ServerConfig())
    found = []
    for route in app.routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    found.append((method, route.path))
    return found


def concrete(path: str) -> str:
    return (
        path.replace("{run_id}", "r1")
        .replace("{name}", "hello")
        .replace("{worker_id}", "w1")
        .replace("{delivery_id}", "1")
        .replace("{path:path}", "index.html")
    )


@pytest.fixture(scope="module")
def keyed():
    with GyozaTestServer(api_keys=("k-one", "k-two")) as s:
        yield s


def guarded_routes() -> list[tuple[str, str]]:
    return [
        (m, p) for m, p in app_routes()
        if p not in OPEN_PATHS and not p.startswith("/ui") and p != "/"
    ]


@pytest.mark.parametrize("method, path", guarded_routes())
def test_every_route_but_healthz_needs_a_key(keyed, method, path):
    for headers in ({}, {"X-API-Key": "wrong"}):
        r = httpx.request(method, keyed.url + concrete(path), headers=headers, json={})
        assert r.status_code == 401, (method, path, headers)
        assert r.json()["error"] == "unauthorized"


def test_any_configured_key_is_accepted(keyed):
    for key in ("k-one", "k-two"):
        assert httpx.get(keyed.url + "/runs", headers={"X-API-Key": key}).status_code == 200


def test_healthz_is_open_with_keys_set(keyed):
    assert httpx.get(keyed.url + "/healthz").status_code == 200


def test_body_over_the_limit_is_413_before_parsing(tmp_path):
    with GyozaTestServer(max_body_bytes=1000) as s:
        r = httpx.post(s.url + "/runs", content=b"{" + b" " * 2000 + b"}",
                       headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]) == (413, "too_large")


def test_chunked_body_over_the_limit_is_413(tmp_path):
    with GyozaTestServer(max_body_bytes=1000) as s:
        def chunks():
            for _ in range(10):
                yield b" " * 500

        r = httpx.post(s.url + "/runs", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


@pytest.mark.parametrize("body", [b"{", b"not json", b"", b"[1, 2]", b"null", b'{"image": 5}'])
def test_malformed_bodies_are_400(server, body):
    r = httpx.post(server.url + "/runs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert set(r.json()) == {"error", "detail"}


def test_unknown_fields_are_400_and_named(server):
    r = httpx.post(server.url + "/runs", json={"image": "x", "colour": "red"})
    assert r.status_code == 400 and "colour" in r.json()["detail"]


def test_unknown_route_is_404_with_error_body(server):
    r = httpx.get(server.url + "/nowhere")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_wrong_method_is_405_with_error_body(server):
    r = httpx.delete(server.url + "/runs")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_non_json_content_type_is_415(server):
    r = httpx.post(server.url + "/runs", content=b'{"image": "x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_bad_query_parameters_are_400(server, client):
    run = client.create_run("busybox", {})
    for url in (
        "/runs?limit=abc",
        "/runs?limit=0",
        "/runs?state=DONE",
        "/runs?cursor=-4",
        f"/runs/{run['id']}/events?after=x",
        f"/runs/{run['id']}/events?wait=soon",
    ):
        r = httpx.get(server.url + url)
        assert r.status_code == 400, url


def test_claim_before_the_first_heartbeat_is_404(server):
    r = httpx.post(server.url + "/workers/ghost/claim")
    assert r.status_code == 404 and "heartbeat" in r.json()["detail"]
