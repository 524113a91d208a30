"""Schemathesis over GET /openapi.json against a real server.

Every operation gets a fixed number of generated requests, valid ones
(positive) and schema-violating ones (negative), derandomized so a failure
reproduces. Checks: no 5xx, documented status codes and content types,
answers that match the documented schema, and schema-violating requests
refused with a 4xx.
"""

from __future__ import annotations

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gyoza.openapi import OPERATIONS
from gyoza.testing import GyozaTestServer

KEY = "fuzz-key"
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live():
    with GyozaTestServer(api_keys=(KEY,)) as s:
        yield s


@pytest.fixture(scope="module")
def known(live) -> dict[str, list[str]]:
    """Existing ids, so generated requests reach past the 404 (runs in every state)."""
    with live.client() as c:
        c.upsert_definition({"name": "a", "version": "1", "image": "busybox"})
        c.heartbeat("0", {"cpu_cores": 64, "ram_mb": 1 << 20, "gpus": []})
        runs = [c.create_run("busybox", {}, priority=100)["id"] for _ in range(4)]
        c.claim("0")  # all four ASSIGNED
        c.add_event(runs[1], "STARTED", "")
        c.add_event(runs[2], "COMPLETED", "")
        c.update_run(runs[3], state="FAILED")
        runs.append(c.create_run_from_definition("a", {})["id"])  # PENDING
    return {"run_id": runs, "worker_id": ["0"], "name": ["a"]}


@pytest.fixture(scope="module")
def schema(live):
    loaded = schemathesis.openapi.from_url(live.url + "/openapi.json")
    loaded.config.update(base_url=live.url)
    # Requests carry the real key (from the session): generated keys would
    # only ever test the 401 path. Unknown query parameters are ignored by
    # design (like most HTTP APIs), so negative cases do not add them.
    loaded.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)
    # A body over the limit is refused with 413, a valid refusal too.
    rejection = loaded.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return loaded


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        s.headers["X-API-Key"] = KEY
        yield s


def _negatable(method: str, path: str) -> bool:
    """Whether a request to this operation can be invalid at all."""
    spec = OPERATIONS[(method, path)]
    return bool(spec.body or set(spec.query) - {"version", "definition"} or "{delivery_id}" in path)


CASES = [
    (method, path, mode)
    for method, path in sorted(OPERATIONS)
    for mode in EXAMPLES
    if mode is not GenerationMode.NEGATIVE or _negatable(method, path)
]


@pytest.mark.parametrize("method, path, mode", CASES, ids=lambda v: getattr(v, "value", v))
def test_operation_survives_generated_requests(schema, live, known, session, method, path, mode):
    operation = schema[path][method]
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

    # Half the cases use generated path parameters, half an existing id.
    strategies = [operation.as_strategy(generation_mode=mode)]
    fixed = [name for name in known if "{" + name + "}" in path and "{delivery_id}" not in path]
    for name in fixed:
        strategies += [
            operation.as_strategy(generation_mode=mode, path_parameters={name: value})
            for value in known[name]
        ]
    strategy = st.one_of(strategies[0], st.one_of(strategies[1:])) if fixed else strategies[0]

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=strategy)
    def run(case):
        if isinstance(case.query, dict) and "wait" in case.query:
            case.query["wait"] = 0  # long-polls would only slow the test down
        response = case.call_and_validate(
            base_url=live.url, session=session, checks=checks, timeout=30
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    statuses: dict[int, int] = {}
    run()
    print(method, path, mode.value, dict(sorted(statuses.items())))
    assert 401 not in statuses, "generated requests must carry the key"
    assert httpx.get(live.url + "/healthz").status_code == 200
