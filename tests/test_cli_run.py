"""`gyoza run` against a real server, runs finished by a fake worker thread."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.cli_fakes import FakeWorker, complete, fail, gyoza, start_then_wait

SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "count": {"type": "integer", "default": 1},
    },
    "required": ["text"],
}


@pytest.fixture
def hello(gyoza_server):
    gyoza_server.client().upsert_definition(
        {"name": "hello", "version": "1", "image": "busybox:latest", "input_schema": SCHEMA}
    )
    return "hello"


def test_run_inputs_are_json_when_they_parse_else_strings(gyoza_server, hello):
    result = gyoza(gyoza_server.url, "run", hello, "--json", "-i", "text=to be", "-i", "count=3",
                   "-i", "tags=[\"a\", 1]", "-i", "flag=true")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["inputs"] == {"text": "to be", "count": 3, "tags": ["a", 1], "flag": True}
    assert run["state"] == "PENDING"


def test_run_inputs_file_is_read_and_dash_i_overrides_it(gyoza_server, hello, tmp_path):
    inputs_file = tmp_path / "inputs.json"
    inputs_file.write_text(json.dumps({"text": "from file", "count": 7}))
    result = gyoza(gyoza_server.url, "run", hello, "--json", "--inputs-file", str(inputs_file),
                   "-i", "count=8")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inputs"] == {"text": "from file", "count": 8}


def test_run_prints_the_run_id_and_state(gyoza_server, hello):
    result = gyoza(gyoza_server.url, "run", hello, "-i", "text=x")
    assert result.exit_code == 0, result.output
    run_id = gyoza_server.client().list_runs()["runs"][0]["id"]
    assert result.stdout.splitlines()[0] == f"run {run_id} PENDING (hello 1)"


def test_run_priority_and_version_are_sent(gyoza_server, hello):
    gyoza_server.client().upsert_definition(
        {"name": "hello", "version": "2", "image": "busybox:latest"})
    result = gyoza(gyoza_server.url, "run", hello, "--version", "1", "--priority", "80",
                   "-i", "text=x", "--json")
    run = json.loads(result.stdout)
    assert (run["version"], run["priority"]) == ("1", 80)


def test_run_image_starts_an_ad_hoc_run(gyoza_server):
    result = gyoza(gyoza_server.url, "run", "--image", "busybox:latest", "-i", "n=1", "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert (run["definition"], run["image"], run["inputs"]) == (None, "busybox:latest", {"n": 1})


def test_run_inputs_failing_the_schema_show_the_server_detail(gyoza_server, hello):
    result = gyoza(gyoza_server.url, "run", hello, "-i", "count=notanumber")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("Error: the server refused the request (400)")
    assert "text" in error[0]


def test_run_malformed_dash_i_is_one_error_line(gyoza_server, hello):
    result = gyoza(gyoza_server.url, "run", hello, "-i", "novalue")
    assert result.exit_code == 1
    assert "expected KEY=VALUE" in result.stderr


def test_run_needs_exactly_one_of_name_and_image(gyoza_server):
    result = gyoza(gyoza_server.url, "run")
    assert result.exit_code == 2
    assert "either a definition NAME or --image" in result.stderr


def test_run_unknown_definition_is_not_found(gyoza_server):
    result = gyoza(gyoza_server.url, "run", "nope")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: not found:")
    assert "gyoza defs ls" in result.stderr


def test_run_follow_exits_0_on_completed_and_shows_progress_logs_and_states(gyoza_server, hello):
    with FakeWorker(gyoza_server.url, script=complete({"answer": 42}, logs="line one\nline two")):
        result = gyoza(gyoza_server.url, "run", hello, "-i", "text=x", "--follow")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for needle in ("QUEUED", "ASSIGNED", "STARTED", "PROGRESS", " 50%", "100%",
                   "\nline one\nline two\n", "COMPLETED", '"answer": 42'):
        assert needle in out, (needle, out)
    assert out.index("STARTED") < out.index("line one") < out.index("COMPLETED")
    assert out.splitlines()[-1].startswith("run ") and " COMPLETED in " in out.splitlines()[-1]


def test_run_follow_exits_1_on_failed_and_shows_the_error(gyoza_server, hello):
    gyoza_server.client().upsert_definition(
        {"name": "once", "version": "1", "image": "busybox:latest",
         "retry_policy": {"max_attempts": 1}})
    with FakeWorker(gyoza_server.url, script=fail("exit code 3: boom")):
        result = gyoza(gyoza_server.url, "run", "once", "--follow")
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.stdout and "boom" in result.stdout
    assert "Traceback" not in result.output


def test_run_follow_shows_an_automatic_retry_then_completion(gyoza_server):
    gyoza_server.client().upsert_definition(
        {"name": "flaky", "version": "1", "image": "busybox:latest",
         "retry_policy": {"max_attempts": 2, "retry_on": ["FAILED"], "backoff_s": 0}})
    attempts = []

    def flaky(client, op, send):
        attempts.append(op["attempt"])
        (fail() if op["attempt"] == 1 else complete())(client, op, send)

    with FakeWorker(gyoza_server.url, script=flaky):
        result = gyoza(gyoza_server.url, "run", "flaky", "--follow")
    assert result.exit_code == 0, result.output
    assert attempts == [1, 2]
    assert "-> PENDING" in result.stdout  # the FAILED event requeued the run
    assert "attempt 2" in result.stdout


def test_run_follow_exits_1_when_the_run_is_cancelled(gyoza_server, hello):
    gate = threading.Event()
    with FakeWorker(gyoza_server.url, script=start_then_wait(gate)):
        client = gyoza_server.client()

        def cancel_when_running():
            for _ in range(200):
                page = client.list_runs(state="RUNNING")["runs"]
                if page:
                    client.cancel_run(page[0]["id"])
                    return
                time.sleep(0.05)

        canceller = threading.Thread(target=cancel_when_running)
        canceller.start()
        result = gyoza(gyoza_server.url, "run", hello, "-i", "text=x", "--follow")
        canceller.join()
        gate.set()
    assert result.exit_code == 1, result.output
    assert "CANCELLED" in result.stdout.splitlines()[-1]


def test_run_follow_json_prints_the_final_run_on_stdout_and_progress_on_stderr(gyoza_server, hello):
    with FakeWorker(gyoza_server.url, script=complete({"answer": 42})):
        result = gyoza(gyoza_server.url, "run", hello, "-i", "text=x", "--follow", "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["state"] == "COMPLETED" and run["outputs"] == {"answer": 42}
    assert "STARTED" in result.stderr


def _follow_process(url: str, *extra: str) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "gyoza.cli", "--server", url, "run", "hello", "-i", "text=x",
         "--follow", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _interrupt_once_running(proc: subprocess.Popen[str]) -> tuple[str, str]:
    # Wait for the log line the fake worker sends after STARTED: the CLI is
    # then inside the long-poll, where Ctrl-C lands in real use.
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "working..." in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    return "".join(seen) + out, err


def test_run_follow_ctrl_c_exits_130_and_leaves_the_run_running(gyoza_server, hello):
    gate = threading.Event()
    with FakeWorker(gyoza_server.url, script=start_then_wait(gate)):
        proc = _follow_process(gyoza_server.url)
        out, err = _interrupt_once_running(proc)
        state = gyoza_server.client().list_runs()["runs"][0]["state"]
        gate.set()
    assert proc.returncode == 130, (out, err)
    assert state == "RUNNING"
    assert "keeps running" in err and "gyoza runs cancel" in err
    assert "Traceback" not in err


def test_run_follow_ctrl_c_with_cancel_on_interrupt_cancels_the_run(gyoza_server, hello):
    gate = threading.Event()
    with FakeWorker(gyoza_server.url, script=start_then_wait(gate)):
        proc = _follow_process(gyoza_server.url, "--cancel-on-interrupt")
        out, err = _interrupt_once_running(proc)
        state = gyoza_server.client().list_runs()["runs"][0]["state"]
        gate.set()
    assert proc.returncode == 130, (out, err)
    assert state == "CANCELLED"
    assert "cancelled" in err
    assert "Traceback" not in err


@pytest.mark.slow  # the server's shutdown waits for the follower's in-flight long-poll
def test_run_follow_survives_a_server_restart_and_still_exits_0(gyoza_server, hello):
    client = gyoza_server.client()
    run = client.create_run_from_definition("hello", {"text": "x"})
    client.heartbeat("w1", {"cpu_cores": 4, "ram_mb": 4096, "gpus": []})
    op = client.claim_ops("w1")[0]
    client.add_event(run["id"], "STARTED", "", attempt=op["attempt"], seq=1)
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gyoza.cli", "--server", gyoza_server.url, "runs", "logs",
         "--follow", run["id"]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    client.add_event(run["id"], "LOG", "before the restart", attempt=op["attempt"], seq=2)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "before the restart\n"
    time.sleep(0.3)  # the follower is back inside its long-poll
    gyoza_server.stop()
    time.sleep(1.0)
    gyoza_server.start()
    client = gyoza_server.client()
    client.add_event(run["id"], "LOG", "after the restart", attempt=op["attempt"], seq=3)
    client.add_event(run["id"], "COMPLETED", "", {"outputs": {}}, attempt=op["attempt"], seq=4)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    assert out == "after the restart\n"
    assert "Traceback" not in err
