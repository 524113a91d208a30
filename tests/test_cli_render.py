"""Terminal rendering of the CLI: the live progress bar and 80-column tables."""

from __future__ import annotations

import io

from gyoza.cliutil import parse_value, table
from gyoza.follow import Renderer, bar


def ev(kind: str, msg="", state="RUNNING", **extra) -> dict:
    return {"id": 1, "type": kind, "msg": msg, "state": state, "attempt": 1,
            "t": "2026-11-28T07:15:02.123456Z", **extra}


def test_progress_bar_on_a_terminal_is_redrawn_in_place_and_cleared_for_log_lines():
    out = io.StringIO()
    r = Renderer(out, tty=True)
    r.event(ev("PROGRESS", 10))
    r.event(ev("PROGRESS", 20))
    r.event(ev("LOG", "a log line"))
    r.close()
    text = out.getvalue()
    assert text.count("\r\x1b[2K" + bar(20)) == 2  # drawn, then redrawn after the log line
    assert "\r\x1b[2Ka log line\n" in text
    assert text.endswith("\r\x1b[2K")  # close() leaves a clean line
    assert "PROGRESS" not in text  # no progress lines on a terminal, only the bar


def test_progress_in_a_log_file_is_one_line_per_ten_percent_step():
    out = io.StringIO()
    r = Renderer(out, tty=False)
    for pct in (1, 2, 5, 11, 12, 55, 100):
        r.event(ev("PROGRESS", pct))
    lines = out.getvalue().splitlines()
    assert [line.split()[-1] for line in lines] == ["1%", "11%", "55%", "100%"]
    assert "\r" not in out.getvalue()


def test_state_lines_show_a_state_the_event_does_not_imply():
    out = io.StringIO()
    r = Renderer(out, tty=False)
    r.event(ev("FAILED", "boom", state="PENDING", payload={"error_message": "exit code 1: boom"}))
    r.event(ev("LOST", "worker w1 went silent", state="FAILED"))
    r.event(ev("COMPLETED", state="COMPLETED", payload={"outputs": {"a": 1}}))
    assert out.getvalue().splitlines() == [
        "[07:15:02] FAILED     exit code 1: boom -> PENDING",
        "[07:15:02] LOST       worker w1 went silent -> FAILED",
        '[07:15:02] COMPLETED  outputs {"a": 1}',
    ]


def test_logs_only_renderer_prints_nothing_but_log_lines():
    out = io.StringIO()
    r = Renderer(out, tty=False, logs_only=True)
    for e in (ev("STARTED"), ev("PROGRESS", 50), ev("LOG", "one\ntwo"), ev("COMPLETED")):
        r.event(e)
    assert out.getvalue() == "one\ntwo\n"


def test_table_shrinks_flexible_columns_to_fit_80_columns_and_never_cuts_ids():
    run_id = "0123456789abcdef0123456789abcdef"
    rows = [[run_id, "RUNNING", "x" * 60]]
    text = table(["ID", "STATE", "OP"], rows, flex=[2], width=80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert run_id in lines[1] and lines[1].endswith("…")


def test_cli_input_values_are_json_when_they_parse():
    assert [parse_value(v) for v in ("3", "2.5", "true", "null", '"3"', "[1]", "hello", "")] == [
        3, 2.5, True, None, "3", [1], "hello", ""]
