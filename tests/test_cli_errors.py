"""Every CLI failure is one line on stderr saying what to do, a non-zero exit, no traceback."""

from __future__ import annotations

import pytest

from tests.cli_fakes import assert_one_error_line, gyoza, gyoza_process

DOWN = "http://127.0.0.1:9"  # the discard port: nothing listens there

COMMANDS = [
    ("run", "hello"),
    ("run", "--image", "busybox"),
    ("runs", "ls"),
    ("runs", "show", "abc"),
    ("runs", "logs", "abc"),
    ("runs", "logs", "--follow", "abc"),
    ("runs", "cancel", "abc"),
    ("runs", "retry", "abc"),
    ("defs", "ls"),
    ("defs", "show", "hello"),
    ("workers",),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_server_down_is_one_line_naming_the_url_and_gyoza_up(args):
    result = gyoza(DOWN, *args)
    assert result.exit_code == 1
    assert_one_error_line(result.output, f"cannot reach the gyoza server at {DOWN}", "gyoza up")


@pytest.mark.gyoza_server_config(api_keys=("right-key",))
@pytest.mark.parametrize("args", [a for a in COMMANDS if a[0] != "run"] + [("run", "hello")],
                         ids=lambda a: " ".join(a))
def test_wrong_api_key_is_one_line_pointing_at_the_key_settings(gyoza_server, args):
    result = gyoza(gyoza_server.url, *args, api_key="wrong-key")
    assert result.exit_code == 1
    assert_one_error_line(result.output, "401", "--api-key", "GYOZA_API_KEY")


@pytest.mark.gyoza_server_config(api_keys=("right-key",))
def test_missing_api_key_is_refused_the_same_way(gyoza_server):
    result = gyoza(gyoza_server.url, "runs", "ls")
    assert result.exit_code == 1
    assert_one_error_line(result.output, "401", "GYOZA_API_KEY")


@pytest.mark.gyoza_server_config(api_keys=("right-key",))
def test_right_api_key_is_accepted(gyoza_server):
    result = gyoza(gyoza_server.url, "runs", "ls", api_key="right-key")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args", [
    ("runs", "show", "no-such-run"),
    ("runs", "logs", "no-such-run"),
    ("runs", "cancel", "no-such-run"),
    ("runs", "retry", "no-such-run"),
], ids=lambda a: " ".join(a))
def test_unknown_run_id_is_not_found_with_a_hint(gyoza_server, args):
    result = gyoza(gyoza_server.url, *args)
    assert result.exit_code == 1
    assert_one_error_line(result.output, "not found", "no-such-run", "gyoza runs ls")


def test_unknown_definition_is_not_found_with_a_hint(gyoza_server):
    result = gyoza(gyoza_server.url, "defs", "show", "nope")
    assert result.exit_code == 1
    assert_one_error_line(result.output, "not found", "nope", "gyoza defs ls")


def test_invalid_server_url_is_one_line(gyoza_server):
    result = gyoza("not a url", "runs", "ls")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Error:")


def test_server_down_in_a_real_process_prints_no_traceback():
    proc = gyoza_process(DOWN, "runs", "ls")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"Error: cannot reach the gyoza server at {DOWN}")
    assert "Traceback" not in proc.stderr


@pytest.mark.gyoza_server_config(api_keys=("right-key",))
def test_bad_key_in_a_real_process_prints_no_traceback(gyoza_server):
    proc = gyoza_process(gyoza_server.url, "workers", api_key="wrong-key")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "GYOZA_API_KEY" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_run_in_a_real_process_prints_no_traceback(gyoza_server):
    proc = gyoza_process(gyoza_server.url, "runs", "show", "no-such-run")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_server_url_comes_from_gyoza_url_env(gyoza_server):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "gyoza.cli", "runs", "ls", "--json"],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "GYOZA_URL": gyoza_server.url})
    assert proc.returncode == 0, proc.stderr
    assert '"runs": []' in proc.stdout
