"""`gyoza runs ...`, `gyoza defs ...` and `gyoza workers` against a real server."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.cli_fakes import FakeWorker, complete, fail, gyoza, start_then_wait

LONG_NAME = "a-rather-long-definition-name-that-will-not-fit-in-the-table"


@pytest.fixture
def client(gyoza_server):
    with gyoza_server.client() as c:
        yield c


@pytest.fixture
def defs(client):
    client.upsert_definition({"name": "hello", "version": "1", "image": "busybox:latest"})
    client.upsert_definition({
        "name": "hello", "version": "2", "image": "busybox:1.36",
        "description": "second",
        "constraints": {"gpus": 1, "vram_mb": 24000},
        "input_schema": {"type": "object", "required": ["text"],
                         "properties": {"text": {"type": "string"},
                                        "count": {"type": "integer", "default": 2}}},
    })
    client.upsert_definition({"name": LONG_NAME, "version": "2026.11.28-build.1234",
                              "image": "registry.example.com/team/some/very/long/image:tag"})


def _finish_one(gyoza_server, client, script) -> str:
    run = client.create_run_from_definition("hello", {}, version="1")
    with FakeWorker(gyoza_server.url, script=script):
        for _ in range(200):
            if client.get_run(run["id"])["state"] in ("COMPLETED", "FAILED"):
                break
            time.sleep(0.05)
    return run["id"]


def assert_fits_80_columns(text: str) -> None:
    assert text.strip()
    assert max(len(line) for line in text.splitlines()) <= 80, text


def test_runs_ls_lists_newest_first_and_fits_80_columns(gyoza_server, client, defs):
    first = client.create_run_from_definition("hello", {}, version="1")["id"]
    second = client.create_run_from_definition(LONG_NAME, {})["id"]
    result = gyoza(gyoza_server.url, "runs", "ls")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "TRY", "AGE", "OP"]
    assert [line.split()[0] for line in lines[1:]] == [second, first]
    assert_fits_80_columns(result.stdout)


def test_runs_ls_json_is_the_servers_page(gyoza_server, client, defs):
    run_id = client.create_run_from_definition("hello", {}, version="1")["id"]
    result = gyoza(gyoza_server.url, "runs", "ls", "--json")
    page = json.loads(result.stdout)
    assert [r["id"] for r in page["runs"]] == [run_id]
    assert "next_cursor" in page


def test_runs_ls_filters_by_state_definition_and_limit(gyoza_server, client, defs):
    a = client.create_run_from_definition("hello", {}, version="1")["id"]
    b = client.create_run_from_definition(LONG_NAME, {})["id"]
    client.cancel_run(a)
    cancelled = json.loads(gyoza(gyoza_server.url, "runs", "ls", "--state", "cancelled",
                                 "--json").stdout)
    by_def = json.loads(gyoza(gyoza_server.url, "runs", "ls", "--definition", LONG_NAME,
                              "--json").stdout)
    limited = json.loads(gyoza(gyoza_server.url, "runs", "ls", "--limit", "1", "--json").stdout)
    assert [r["id"] for r in cancelled["runs"]] == [a]
    assert [r["id"] for r in by_def["runs"]] == [b]
    assert [r["id"] for r in limited["runs"]] == [b]


def test_runs_ls_with_no_runs_says_how_to_start_one(gyoza_server):
    result = gyoza(gyoza_server.url, "runs", "ls")
    assert result.exit_code == 0
    assert "gyoza run" in result.stdout


def test_runs_show_prints_state_inputs_outputs_and_attempts(gyoza_server, client, defs):
    run_id = _finish_one(gyoza_server, client, complete({"answer": 42}))
    result = gyoza(gyoza_server.url, "runs", "show", run_id)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"id:         {run_id}" in out
    assert "state:      COMPLETED" in out
    assert 'outputs:    {"answer": 42}' in out
    assert "worker:     fake-worker" in out
    assert "TRY  STATE" in out
    assert_fits_80_columns(out)


def test_runs_show_json_includes_events_and_attempts(gyoza_server, client, defs):
    run_id = _finish_one(gyoza_server, client, complete())
    run = json.loads(gyoza(gyoza_server.url, "runs", "show", run_id, "--json").stdout)
    assert run["id"] == run_id
    assert [e["type"] for e in run["events"]][-1] == "COMPLETED"
    assert len(run["attempts"]) == 1


def test_runs_logs_prints_only_the_log_lines(gyoza_server, client, defs):
    run_id = _finish_one(gyoza_server, client, complete(logs="one\ntwo"))
    result = gyoza(gyoza_server.url, "runs", "logs", run_id)
    assert result.exit_code == 0, result.output
    assert result.stdout == "one\ntwo\n"


def test_runs_logs_follow_streams_until_the_end_and_exits_with_the_outcome(gyoza_server, client, defs):
    gate = threading.Event()
    run_id = client.create_run_from_definition("hello", {}, version="1")["id"]
    with FakeWorker(gyoza_server.url, script=start_then_wait(gate, then=fail("exit code 1: no"))):
        threading.Timer(0.5, gate.set).start()
        result = gyoza(gyoza_server.url, "runs", "logs", "--follow", run_id)
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == ["working...", "about to fail"]


def test_runs_cancel_cancels_a_pending_run(gyoza_server, client, defs):
    run_id = client.create_run_from_definition("hello", {}, version="1")["id"]
    result = gyoza(gyoza_server.url, "runs", "cancel", run_id)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"run {run_id} CANCELLED"
    assert client.get_run(run_id)["state"] == "CANCELLED"


def test_runs_cancel_of_a_finished_run_shows_the_servers_reason(gyoza_server, client, defs):
    run_id = _finish_one(gyoza_server, client, complete())
    result = gyoza(gyoza_server.url, "runs", "cancel", run_id)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: the server refused the request (400)")
    assert "Traceback" not in result.output


def test_runs_retry_requeues_a_failed_run_as_a_new_attempt(gyoza_server, client, defs):
    run_id = _finish_one(gyoza_server, client, fail())
    # max_attempts is 3 and FAILED is not in retry_on: the run ended FAILED on attempt 1.
    result = gyoza(gyoza_server.url, "runs", "retry", run_id, "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert (run["state"], run["attempt"]) == ("PENDING", 2)


def test_defs_ls_lists_every_version_marks_latest_and_fits_80_columns(gyoza_server, defs):
    result = gyoza(gyoza_server.url, "defs", "ls")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows if r[0] == "hello"] == [("hello", "1"), ("hello", "2*")]
    assert any("1gpu" in line for line in result.stdout.splitlines())
    assert_fits_80_columns(result.stdout)


def test_defs_ls_json_lists_every_definition(gyoza_server, defs):
    items = json.loads(gyoza(gyoza_server.url, "defs", "ls", "--json").stdout)
    assert sorted((d["name"], d["version"]) for d in items) == sorted(
        [("hello", "1"), ("hello", "2"), (LONG_NAME, "2026.11.28-build.1234")])


def test_defs_show_prints_the_latest_version_with_needs_and_inputs(gyoza_server, defs):
    result = gyoza(gyoza_server.url, "defs", "show", "hello")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "version:     2" in out
    assert "1 GPU with >= 24000 MB" in out
    assert "  text: string (required)" in out
    assert "  count: integer = 2" in out


def test_defs_show_version_and_json(gyoza_server, defs):
    result = gyoza(gyoza_server.url, "defs", "show", "hello", "--version", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["image"] == "busybox:latest"


def test_defs_show_json_output_can_be_deployed_back_unchanged(gyoza_server, defs, tmp_path):
    exported = tmp_path / "hello.json"
    exported.write_text(gyoza(gyoza_server.url, "defs", "show", "hello", "--json").stdout)
    result = gyoza(gyoza_server.url, "deploy", str(exported))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("unchanged")


def test_workers_lists_each_worker_with_free_resources(gyoza_server):
    with FakeWorker(gyoza_server.url, worker_id="gpu-box-01", gpus=2) as worker:
        worker.heartbeat()
        result = gyoza(gyoza_server.url, "workers")
        as_json = json.loads(gyoza(gyoza_server.url, "workers", "--json").stdout)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split()[:5] == ["gpu-box-01", "ONLINE", "8/8",
                                                         "16.0/16.0", "2/2"]
    assert_fits_80_columns(result.stdout)
    assert [w["worker_id"] for w in as_json] == ["gpu-box-01"]


def test_workers_with_none_says_how_to_add_one(gyoza_server):
    result = gyoza(gyoza_server.url, "workers")
    assert result.exit_code == 0
    assert "gyoza worker --server" in result.stdout


def test_runs_and_defs_alone_list_like_ls(gyoza_server, client, defs):
    run_id = client.create_run_from_definition("hello", {}, version="1")["id"]
    runs = gyoza(gyoza_server.url, "runs")
    definitions = gyoza(gyoza_server.url, "defs")
    assert runs.exit_code == 0 and run_id in runs.stdout
    assert definitions.exit_code == 0 and definitions.stdout.startswith("NAME")
