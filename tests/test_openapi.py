"""GET /openapi.json: generated from the app's routes and the msgspec models."""

from __future__ import annotations

import re

import httpx
import msgspec
import pytest
from starlette.routing import Route

from gyoza import models
from gyoza.config import ServerConfig
from gyoza.openapi import OPERATIONS, UnknownRoute, build_document, is_ui
from gyoza.server import build_app
from gyoza.testing import GyozaTestServer


def app_routes() -> list[tuple[str, str]]:
    """Every (method, path) the Starlette app serves, read from the app (not a hand list)."""
    app = build_app(ServerConfig())
    found = []
    for route in app.routes:
        if isinstance(route, Route) and not is_ui(route.path):
            found += [(m, route.path) for m in route.methods or () if m != "HEAD"]
    assert len(found) >= 18
    return found


@pytest.fixture(scope="module")
def keyed():
    with GyozaTestServer(api_keys=("k-1",)) as s:
        yield s


@pytest.fixture(scope="module")
def doc(keyed) -> dict:
    r = httpx.get(keyed.url + "/openapi.json")  # public: no key
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    return r.json()


def test_document_is_openapi_3_1_with_the_api_key_scheme(doc):
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    assert doc["security"] == [{"ApiKey": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/openapi.json"]["get"]["security"] == []


@pytest.mark.parametrize("method, path", app_routes())
def test_every_route_of_the_app_is_documented(doc, method, path):
    op = doc["paths"][path][method.lower()]
    params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
    assert params == set(re.findall(r"{(\w+)}", path))
    responses = op["responses"]
    assert any(code.startswith("2") for code in responses)
    public = path in ("/healthz", "/openapi.json")
    assert ("401" in responses) is not public
    assert ("security" in op and op["security"] == []) is public
    for code, resp in responses.items():
        schema = resp["content"]["application/json"]["schema"]
        if not code.startswith("2"):
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}
    if "requestBody" in op:
        assert {"400", "413", "415"} <= set(responses)


def test_query_parameters_are_documented(doc):
    def query(method, path):
        return {p["name"] for p in doc["paths"][path][method].get("parameters", []) if p["in"] == "query"}

    assert query("get", "/runs") == {"state", "definition", "limit", "cursor"}
    assert query("get", "/runs/{run_id}/events") == {"after", "wait", "limit"}
    assert query("post", "/workers/{worker_id}/claim") == {"wait", "max"}
    assert query("get", "/definitions/{name}") == {"version"}
    assert query("post", "/definitions/{name}/runs") == {"version"}
    assert "409" in doc["paths"]["/runs/{run_id}/events"]["post"]["responses"]


def test_schemas_are_generated_from_the_models(doc):
    """Every component is exactly what msgspec generates for the model of that name."""
    schemas = doc["components"]["schemas"]
    for name in ("OpRun", "EventIn", "OpDefinition", "RunCreate", "Heartbeat", "Delivery", "Worker"):
        model = getattr(models, name)
        (_,), expected = msgspec.json.schema_components(
            [model], ref_template="#/components/schemas/{name}"
        )
        assert schemas[name] == expected[name], name
    body = doc["paths"]["/runs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RunCreate"}
    assert schemas["EventIn"]["additionalProperties"] is False  # unknown fields are a 400


def test_a_route_without_an_operation_entry_is_refused():
    routes = [Route("/brand-new", lambda r: None, methods=["GET"])]
    with pytest.raises(UnknownRoute, match="GET /brand-new"):
        build_document(routes)


def test_no_stale_operation_entries():
    """Every OPERATIONS entry is still a route of the app."""
    assert set(OPERATIONS) == set(app_routes())


def test_deliveries_answer_matches_the_delivery_model(keyed):
    """The deliveries list is encoded from the Delivery struct the document describes."""
    with keyed.client() as c:
        run = c.create_run(
            "busybox", {}, event_delivery={"url": "http://127.0.0.1:9/hook", "secret": "s3cret"}
        )
        deliveries = c.list_deliveries(run["id"])
    assert deliveries, "the QUEUED event is to be delivered"
    msgspec.convert(deliveries, list[models.Delivery])
