"""Definitions: upsert, versions and "latest", input schemas with defaults."""

from __future__ import annotations

import httpx
import pytest

from gyoza import OpDefinition

from .conftest import definition

SCHEMA = {
    "type": "object",
    "required": ["prompt", "steps"],
    "properties": {
        "prompt": {"type": "string"},
        "steps": {"type": "integer", "minimum": 1, "default": 20},
        "seed": {"type": "integer"},
    },
    "additionalProperties": False,
}


def test_upsert_is_201_when_new_and_200_when_replaced(client):
    first = client._http.post("/definitions", json=definition(description="a"))
    second = client._http.post("/definitions", json=definition(description="b"))
    assert (first.status_code, second.status_code) == (201, 200)
    assert client.get_definition("hello")["description"] == "b"
    assert second.json()["created_at"] == first.json()["created_at"]


def test_latest_is_the_version_whose_first_upsert_came_last(client):
    client.upsert_definition(definition(version="1"))
    client.upsert_definition(definition(version="2"))
    client.upsert_definition(definition(version="1", description="re-upserted"))
    assert client.get_definition("hello")["version"] == "2"
    assert client.get_definition("hello", version="1")["description"] == "re-upserted"


def test_list_definitions_returns_every_version(client):
    client.upsert_definition(definition(version="1"))
    client.upsert_definition(definition(version="2"))
    client.upsert_definition(definition(name="other"))
    got = sorted((d["name"], d["version"]) for d in client.list_definitions())
    assert got == [("hello", "1"), ("hello", "2"), ("other", "1")]


def test_a_fetched_definition_can_be_sent_back(client):
    stored = client.upsert_definition(definition())
    again = client._http.post("/definitions", json=stored)
    assert again.status_code == 200


def test_opdefinition_struct_round_trips_through_the_server(client):
    op = OpDefinition(name="sd", version="1.0", image="sd:1", input_schema=SCHEMA)
    stored = client.upsert_definition(op.to_dict())
    assert OpDefinition.from_dict(stored).input_schema == SCHEMA


def test_unknown_definition_and_version_are_404(client):
    client.upsert_definition(definition())
    for call in (lambda: client.get_definition("nope"), lambda: client.get_definition("hello", "9")):
        with pytest.raises(httpx.HTTPStatusError) as info:
            call()
        assert info.value.response.status_code == 404


@pytest.mark.parametrize(
    "field, value, mentions",
    [
        ("name", "Has Caps", "name"),
        ("version", "1/2", "version"),
        ("version", "", "version"),
        ("image", "", "image"),
        ("constraints", {"gpus": 0, "vram_mb": 100}, "vram_mb"),
        ("constraints", {"gpus": 0, "gpu_tags": ["a100"]}, "gpu_tags"),
        ("constraints", {"cpu_cores": -1}, "constraints.cpu_cores"),
        ("retry_policy", {"max_attempts": 0}, "retry_policy.max_attempts"),
        ("retry_policy", {"retry_on": ["SOMETIMES"]}, "retry_policy.retry_on"),
        ("retry_policy", {"backoff_factor": 0.5}, "retry_policy.backoff_factor"),
        ("event_delivery", {"url": "ftp://example.com"}, "http"),
        ("timeout_s", 0, "timeout_s"),
        ("input_schema", {"type": "nonsense"}, "input_schema"),
        ("surprise", 1, "surprise"),
    ],
)
def test_invalid_definitions_are_400_naming_the_field(client, field, value, mentions):
    r = client._http.post("/definitions", json=definition(**{field: value}))
    assert r.status_code == 400
    assert mentions in r.json()["detail"]


def test_inputs_get_schema_defaults_filled_in(client):
    client.upsert_definition(definition(input_schema=SCHEMA))
    run = client.create_run_from_definition("hello", {"prompt": "a cat"})
    assert run["inputs"] == {"prompt": "a cat", "steps": 20}


def test_invalid_inputs_list_every_problem(client):
    client.upsert_definition(definition(input_schema=SCHEMA))
    r = client._http.post("/definitions/hello/runs", json={"inputs": {"steps": 0, "extra": 1}})
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "'prompt' is a required property" in detail
    assert "inputs.steps" in detail
    assert "extra" in detail


def test_run_uses_the_requested_version(client):
    client.upsert_definition(definition(version="1", image="img:1"))
    client.upsert_definition(definition(version="2", image="img:2"))
    assert client.create_run_from_definition("hello", {})["image"] == "img:2"
    run = client.create_run_from_definition("hello", {}, version="1")
    assert (run["image"], run["version"]) == ("img:1", "1")


def test_run_inherits_the_definition_settings(client):
    client.upsert_definition(
        definition(
            command=["sh", "-c", "echo hi"],
            env={"A": "1"},
            constraints={"cpu_cores": 2, "ram_mb": 512},
            retry_policy={"max_attempts": 4},
            timeout_s=30,
        )
    )
    run = client.create_run_from_definition("hello", {}, priority=7)
    assert run["command"] == ["sh", "-c", "echo hi"] and run["env"] == {"A": "1"}
    assert run["constraints"]["cpu_cores"] == 2 and run["retry_policy"]["max_attempts"] == 4
    assert (run["timeout_s"], run["priority"]) == (30, 7)


def test_run_of_an_unknown_definition_is_404(client):
    r = client._http.post("/definitions/nope/runs", json={"inputs": {}})
    assert r.status_code == 404


def test_a_runs_own_event_delivery_overrides_the_definitions(client):
    client.upsert_definition(definition(event_delivery={"url": "http://127.0.0.1:9/def"}))
    inherited = client.create_run_from_definition("hello", {})
    own = client.create_run_from_definition(
        "hello", {}, event_delivery={"url": "http://127.0.0.1:9/run", "events": ["COMPLETED"]}
    )
    assert inherited["event_delivery"]["url"] == "http://127.0.0.1:9/def"
    assert own["event_delivery"]["url"] == "http://127.0.0.1:9/run"
    assert own["event_delivery"]["events"] == ["COMPLETED"]
