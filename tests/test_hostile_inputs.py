"""A table of hostile requests, each with the exact status and error code it gets.

No request may produce a 5xx by its content (SPEC §3): wrong types, huge
numbers, NaN, deep nesting, invalid UTF-8, oversized bodies, SQL-looking
strings, empty bodies, wrong content types, unknown fields, routes and
methods.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from gyoza.testing import GyozaTestServer

SQL = "x'; DROP TABLE runs; --"
SQL_PATH = "x'%3B%20DROP%20TABLE%20runs%3B%20--"
JSON = {"content-type": "application/json"}
MIB = 1024 * 1024


@dataclass
class Case:
    id: str
    method: str
    path: str  # {run} is an existing PENDING run, {claimed} an ASSIGNED one
    status: int
    code: str | None  # the "error" of the answer; None for a 2xx
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    detail: str | None = None  # a substring the detail must contain


def j(text: str) -> bytes:
    return text.encode()


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


HB = {"worker_id": "w", "resources": {"cpu_cores": 1, "ram_mb": 1}}


def nested(depth: int) -> bytes:
    return b'{"image":"x","inputs":{"k":' + b"[" * depth + b"]" * depth + b"}}"


CASES = [
    # -- wrong types
    Case("image-int", "POST", "/runs", 400, "invalid", j('{"image": 5}'), detail="image"),
    Case("priority-str", "POST", "/runs", 400, "invalid", j('{"image":"x","priority":"high"}'), detail="priority"),
    Case("inputs-list", "POST", "/runs", 400, "invalid", j('{"image":"x","inputs":[]}'), detail="inputs"),
    Case("body-array", "POST", "/runs", 400, "invalid", j("[]")),
    Case("body-null", "POST", "/runs", 400, "invalid", j("null")),
    Case("event-msg-list", "POST", "/runs/{run}/events", 400, "invalid", j('{"type":"LOG","msg":[1]}'), detail="msg"),
    Case("event-type-bad", "POST", "/runs/{run}/events", 400, "invalid", j('{"type":"EXPLODE"}'), detail="type"),
    Case("hb-cpu-str", "POST", "/workers/heartbeat", 400, "invalid",
         j('{"worker_id":"w","resources":{"cpu_cores":"many","ram_mb":1}}'), detail="cpu_cores"),
    Case("patch-state-int", "PATCH", "/runs/{run}", 400, "invalid", j('{"state": 3}'), detail="state"),
    Case("limit-word", "GET", "/runs?limit=ten", 400, "invalid", detail="limit"),
    Case("limit-space", "GET", "/runs?limit=%205", 400, "invalid", detail="limit"),
    Case("limit-underscore", "GET", "/runs?limit=1_0", 400, "invalid", detail="limit"),
    Case("limit-arabic-digit", "GET", "/runs?limit=%D9%A1", 400, "invalid", detail="limit"),
    Case("after-negative", "GET", "/runs/{run}/events?after=-1", 400, "invalid", detail="after"),
    Case("after-double-minus", "GET", "/runs/{run}/events?after=--1", 400, "invalid", detail="after"),
    Case("state-unknown", "GET", "/runs?state=DONE", 400, "invalid", detail="state"),
    Case("claim-max-word", "POST", "/workers/w1/claim?max=all", 400, "invalid", detail="max"),
    # -- huge numbers
    Case("priority-1e400", "POST", "/runs", 400, "invalid", j('{"image":"x","priority":1e400}'), detail="priority"),
    Case("timeout-1e400", "POST", "/runs", 400, "invalid", j('{"image":"x","timeout_s":1e400}'), detail="timeout_s"),
    Case("priority-2**70", "POST", "/runs", 400, "invalid", js({"image": "x", "priority": 2**70}), detail="priority"),
    Case("ram-2**70", "POST", "/runs", 400, "invalid",
         js({"image": "x", "constraints": {"ram_mb": 2**70}}), detail="ram_mb"),
    Case("inputs-1e400", "POST", "/runs", 400, "invalid", j('{"image":"x","inputs":{"n":1e400}}'), detail="inputs"),
    Case("inputs-2**70-kept", "POST", "/runs", 201, None, js({"image": "x", "inputs": {"n": 2**70}})),
    Case("progress-1e400", "POST", "/runs/{claimed}/events", 400, "invalid", j('{"type":"PROGRESS","msg":1e400}')),
    Case("progress-101", "POST", "/runs/{claimed}/events", 400, "invalid", j('{"type":"PROGRESS","msg":101}'), detail="msg"),
    Case("event-attempt-2**63", "POST", "/runs/{run}/events", 400, "invalid",
         js({"type": "LOG", "msg": "x", "attempt": 2**63, "seq": 1}), detail="attempt"),
    Case("event-seq-2**70", "POST", "/runs/{run}/events", 400, "invalid",
         js({"type": "LOG", "msg": "x", "seq": 2**70}), detail="seq"),
    Case("hb-attempt-2**70", "POST", "/workers/heartbeat", 400, "invalid",
         js({**HB, "running_ops": [{"run_id": "r", "attempt": 2**70}]})),
    Case("exit-code-2**70", "POST", "/runs/{claimed}/events", 400, "invalid",
         js({"type": "FAILED", "payload": {"exit_code": 2**70}}), detail="exit_code"),
    Case("after-2**70", "GET", f"/runs/{{run}}/events?after={2**70}", 400, "invalid", detail="after"),
    Case("cursor-2**70", "GET", f"/runs?cursor={2**70}", 400, "invalid", detail="cursor"),
    Case("limit-1e400", "GET", "/runs?limit=1e400", 400, "invalid", detail="limit"),
    Case("delivery-id-huge", "POST", "/runs/{run}/deliveries/99999999999999999999/redeliver", 404, "not_found"),
    Case("delivery-id-superscript", "POST", "/runs/{run}/deliveries/%C2%B2/redeliver", 404, "not_found"),
    # -- NaN / Infinity (not JSON)
    Case("nan-token", "POST", "/runs", 400, "invalid_json", j('{"image":"x","timeout_s":NaN}')),
    Case("infinity-token", "POST", "/runs", 400, "invalid_json", j('{"image":"x","priority":Infinity}')),
    Case("neg-infinity-token", "POST", "/runs/{claimed}/events", 400, "invalid_json",
         j('{"type":"PROGRESS","msg":-Infinity}')),
    Case("wait-nan", "GET", "/runs/{run}/events?wait=nan", 400, "invalid", detail="wait"),
    Case("wait-neg-inf", "GET", "/runs/{run}/events?wait=-inf", 400, "invalid", detail="wait"),
    # -- deep nesting
    Case("nested-10k-objects", "POST", "/runs", 400, "invalid_json",
         b'{"image":"x","inputs":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}", detail="nested"),
    Case("nested-10k-lists", "POST", "/runs/{run}/events", 400, "invalid_json",
         b'{"type":"LOG","payload":{"a":' + b"[" * 10_000 + b"]" * 10_000 + b"}}", detail="nested"),
    Case("nested-200-kept", "POST", "/runs", 201, None, nested(200)),
    # -- invalid UTF-8 and odd strings
    Case("utf8-invalid-body", "POST", "/runs", 400, "invalid_json", b'{"image":"\xff\xfe"}', detail="UTF-8"),
    Case("utf8-invalid-in-string", "POST", "/runs/{run}/events", 400, "invalid_json",
         b'{"type":"LOG","msg":"ok \xc3\x28"}', detail="UTF-8"),
    Case("utf8-overlong", "POST", "/definitions", 400, "invalid_json",
         b'{"name":"a","version":"1","image":"\xc0\xaf"}', detail="UTF-8"),
    Case("lone-surrogate", "POST", "/runs", 400, "invalid_json", j('{"image":"x","inputs":{"\\udc00":1}}')),
    Case("utf8-invalid-path", "GET", "/runs/%FF%FE", 404, "not_found"),
    Case("utf8-invalid-query", "GET", "/runs?definition=%FF", 200, None),
    Case("nul-in-image", "POST", "/runs", 400, "invalid", j('{"image":"x\\u0000y"}'), detail="image"),
    Case("nul-in-env", "POST", "/runs", 400, "invalid", j('{"image":"x","env":{"A":"\\u0000"}}'), detail="env"),
    Case("equals-in-env-name", "POST", "/runs", 400, "invalid", j('{"image":"x","env":{"A=B":"1"}}'), detail="env"),
    Case("nul-in-path", "GET", "/runs/%00", 404, "not_found"),
    # -- very long strings
    Case("body-over-1mib", "POST", "/runs", 413, "too_large",
         b'{"image":"x","inputs":{"a":"' + b"x" * MIB + b'"}}'),
    Case("body-over-1mib-events", "POST", "/runs/{run}/events", 413, "too_large",
         b'{"type":"LOG","msg":"' + b"x" * (MIB + 1) + b'"}'),
    Case("string-under-1mib-kept", "POST", "/runs", 201, None,
         b'{"image":"x","inputs":{"a":"' + b"x" * (MIB - 100) + b'"}}'),
    Case("log-msg-over-64k", "POST", "/runs/{claimed}/events", 400, "invalid",
         b'{"type":"LOG","msg":"' + b"x" * (64 * 1024 + 1) + b'"}', detail="msg"),
    Case("log-msg-64k-kept", "POST", "/runs/{claimed}/events", 200, None,
         b'{"type":"LOG","msg":"' + b"x" * (64 * 1024) + b'"}'),
    Case("image-over-512", "POST", "/runs", 400, "invalid", js({"image": "x" * 513}), detail="image"),
    Case("name-over-128", "POST", "/definitions", 400, "invalid",
         js({"name": "a" * 129, "version": "1", "image": "x"}), detail="name"),
    Case("long-path-id", "GET", "/runs/" + "r" * 10_000, 404, "not_found"),
    # -- SQL-looking strings, in every path parameter and string field
    Case("sql-run-id", "GET", f"/runs/{SQL_PATH}", 404, "not_found"),
    Case("sql-run-id-events", "GET", f"/runs/{SQL_PATH}/events", 404, "not_found"),
    Case("sql-run-id-post-event", "POST", f"/runs/{SQL_PATH}/events", 404, "not_found", j('{"type":"LOG"}')),
    Case("sql-run-id-patch", "PATCH", f"/runs/{SQL_PATH}", 404, "not_found", j('{"priority":1}')),
    Case("sql-run-id-retry", "POST", f"/runs/{SQL_PATH}/retry", 404, "not_found"),
    Case("sql-run-id-attempts", "GET", f"/runs/{SQL_PATH}/attempts", 404, "not_found"),
    Case("sql-run-id-deliveries", "GET", f"/runs/{SQL_PATH}/deliveries", 404, "not_found"),
    Case("sql-delivery-id", "POST", "/runs/{run}/deliveries/1%20OR%201=1/redeliver", 404, "not_found"),
    Case("sql-definition-name", "GET", f"/definitions/{SQL_PATH}", 404, "not_found"),
    Case("sql-definition-runs", "POST", f"/definitions/{SQL_PATH}/runs", 404, "not_found", j("{}")),
    Case("sql-version-query", "GET", f"/definitions/hello?version={SQL_PATH}", 404, "not_found"),
    Case("sql-definition-query", "GET", f"/runs?definition={SQL_PATH}", 200, None),
    Case("sql-cursor-query", "GET", f"/runs?cursor={SQL_PATH}", 400, "invalid"),
    Case("sql-worker-claim", "POST", f"/workers/{SQL_PATH}/claim", 404, "not_found"),
    Case("sql-worker-id-field", "POST", "/workers/heartbeat", 400, "invalid",
         js({**HB, "worker_id": SQL}), detail="worker_id"),
    Case("sql-definition-name-field", "POST", "/definitions", 400, "invalid",
         js({"name": SQL, "version": "1", "image": "x"}), detail="name"),
    Case("sql-version-field", "POST", "/definitions", 201, None,
         j('{"name":"sqlv","version":"x\'OR\'1\'=\'1","image":"x"}')),
    Case("sql-image-field", "POST", "/runs", 201, None, j('{"image":"x\';DROP-TABLE-runs;--"}')),
    Case("sql-strings-kept", "POST", "/runs", 201, None,
         js({"image": "x", "inputs": {SQL: SQL}, "env": {"K": SQL}, "command": [SQL]})),
    Case("sql-event-msg", "POST", "/runs/{claimed}/events", 200, None, js({"type": "LOG", "msg": SQL})),
    Case("sql-tags", "POST", "/workers/heartbeat", 200, None,
         js({**HB, "worker_id": "w2", "tags": [SQL]})),
    # -- empty bodies
    Case("empty-runs", "POST", "/runs", 400, "invalid_json", b"", detail="empty"),
    Case("empty-definitions", "POST", "/definitions", 400, "invalid_json", b"", detail="empty"),
    Case("empty-events", "POST", "/runs/{run}/events", 400, "invalid_json", b""),
    Case("empty-patch", "PATCH", "/runs/{run}", 400, "invalid_json", b""),
    Case("empty-heartbeat", "POST", "/workers/heartbeat", 400, "invalid_json", b""),
    Case("empty-runs-from-def", "POST", "/definitions/hello/runs", 400, "invalid_json", b""),
    Case("whitespace-body", "POST", "/runs", 400, "invalid_json", b" \n\t ", detail="empty"),
    Case("empty-object-patch", "PATCH", "/runs/{run}", 400, "invalid", b"{}"),
    Case("empty-object-runs", "POST", "/runs", 400, "invalid", b"{}", detail="image"),
    # -- content types
    Case("text-plain", "POST", "/runs", 415, "unsupported_media_type", j('{"image":"x"}'),
         headers={"content-type": "text/plain"}),
    Case("form-urlencoded", "POST", "/workers/heartbeat", 415, "unsupported_media_type", b"worker_id=w",
         headers={"content-type": "application/x-www-form-urlencoded"}),
    Case("multipart", "POST", "/definitions", 415, "unsupported_media_type", b"--b\r\n\r\n--b--",
         headers={"content-type": "multipart/form-data; boundary=b"}),
    Case("xml", "PATCH", "/runs/{run}", 415, "unsupported_media_type", b"<priority>1</priority>",
         headers={"content-type": "application/xml"}),
    Case("json-charset-ok", "POST", "/runs", 201, None, j('{"image":"x"}'),
         headers={"content-type": "application/json; charset=utf-8"}),
    # -- unknown fields (never silently dropped)
    Case("unknown-top", "POST", "/runs", 400, "invalid", j('{"image":"x","bogus":1}'), detail="bogus"),
    Case("unknown-nested", "POST", "/runs", 400, "invalid",
         j('{"image":"x","constraints":{"cpus":2}}'), detail="cpus"),
    Case("unknown-event", "POST", "/runs/{run}/events", 400, "invalid", j('{"type":"LOG","level":"x"}'), detail="level"),
    Case("unknown-patch", "PATCH", "/runs/{run}", 400, "invalid", j('{"status":"CANCELLED"}'), detail="status"),
    Case("unknown-definition", "POST", "/definitions", 400, "invalid",
         j('{"name":"a","version":"1","image":"x","retries":3}'), detail="retries"),
    Case("unknown-heartbeat", "POST", "/workers/heartbeat", 400, "invalid",
         j('{"worker_id":"w","resources":{"cpu_cores":1,"ram_mb":1,"disk":5}}'), detail="disk"),
    # -- unknown routes and wrong methods
    Case("route-unknown", "GET", "/nope", 404, "not_found", detail="/nope"),
    Case("route-too-deep", "GET", "/runs/a/b/c", 404, "not_found"),
    Case("route-v1-prefix", "POST", "/v1/runs", 404, "not_found", j('{"image":"x"}')),
    Case("method-delete-runs", "DELETE", "/runs", 405, "method_not_allowed"),
    Case("method-put-definitions", "PUT", "/definitions", 405, "method_not_allowed", j("{}")),
    Case("method-get-heartbeat", "GET", "/workers/heartbeat", 405, "method_not_allowed"),
    Case("method-delete-run", "DELETE", "/runs/{run}", 405, "method_not_allowed"),
    Case("method-get-claim", "GET", "/workers/w1/claim", 405, "method_not_allowed"),
    Case("method-post-healthz", "POST", "/healthz", 405, "method_not_allowed"),
]


@pytest.fixture(scope="module")
def live() -> Any:
    with GyozaTestServer() as s:
        with s.client() as c:
            c.upsert_definition({"name": "hello", "version": "1", "image": "busybox"})
            c.heartbeat("w1", {"cpu_cores": 64, "ram_mb": 1 << 20, "gpus": []})
            claimed = c.create_run("busybox", {}, priority=100)["id"]
            assert [op["run_id"] for op in c.claim("w1", max=1)["ops"]] == [claimed]
            run = c.create_run("busybox", {}, priority=0)["id"]
        s.ids = {"run": run, "claimed": claimed}
        yield s


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request_gets_the_exact_answer(live, case: Case):
    path = case.path.replace("{run}", live.ids["run"]).replace("{claimed}", live.ids["claimed"])
    with httpx.Client(base_url=live.url, timeout=30) as http:
        r = http.request(case.method, path, content=case.body, headers=case.headers)
        assert r.status_code == case.status, r.text[:300]
        assert r.headers["content-type"].startswith("application/json")
        body = r.json()
        if case.code is not None:
            assert set(body) == {"error", "detail"}, body
            assert body["error"] == case.code, body
            assert body["detail"]
            if case.detail is not None:
                assert case.detail in body["detail"], body
        # The server is still whole: tables intact, nothing half-written.
        assert http.get("/runs", params={"limit": 1}).status_code == 200


def test_sql_looking_strings_are_stored_verbatim(live):
    with live.client() as c:
        run = c.create_run("busybox", {SQL: SQL}, env={"K": SQL}, command=[SQL])
        got = c.get_run(run["id"])
        assert got["inputs"] == {SQL: SQL}
        assert got["env"] == {"K": SQL} and got["command"] == [SQL]
        c.add_event(live.ids["claimed"], "LOG", SQL)
        events = c.poll_events(live.ids["claimed"])["events"]
        assert events[-1]["msg"] == SQL
        assert c.list_runs(limit=1)["runs"][0]["id"] == run["id"]


def raw_request(live, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes that HTTP clients refuse to send (lying headers)."""
    with socket.create_connection(("127.0.0.1", live.config.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].endswith(b"}"):
                break
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_content_length_over_the_limit_is_refused_before_reading(live):
    status, body = raw_request(
        live,
        b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 999999999999\r\nConnection: close",
    )
    assert status == 413 and b'"too_large"' in body


def test_chunked_body_over_the_limit_is_refused(live):
    def chunks():
        yield b'{"image":"x","inputs":{"a":"'
        for _ in range(12):
            yield b"x" * 100_000
        yield b'"}}'

    r = httpx.post(live.url + "/runs", content=chunks(), headers=JSON)  # no Content-Length
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_remote_ref_in_input_schema_is_never_fetched(live):
    """A definition's schema naming a URL must not make the server fetch it (SSRF)."""
    hits = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/schema.json"
        with live.client() as c:
            c.upsert_definition(
                {"name": "remote", "version": "1", "image": "x", "input_schema": {"$ref": url}}
            )
            r = httpx.post(live.url + "/definitions/remote/runs", json={"inputs": {}})
        try:
            hits.append(listener.accept())
        except TimeoutError:
            pass
    assert r.status_code == 400 and "$ref" in r.json()["detail"], r.text
    assert not hits, "the server fetched a URL named in a client's schema"


def test_self_referencing_input_schema_is_a_400(live):
    with live.client() as c:
        c.upsert_definition(
            {"name": "loop", "version": "1", "image": "x", "input_schema": {"$ref": "#"}}
        )
    r = httpx.post(live.url + "/definitions/loop/runs", json={"inputs": {}})
    assert r.status_code == 400 and r.json()["error"] == "invalid"
