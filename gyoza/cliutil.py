"""Small helpers behind the user commands of ``gyoza`` (see ``gyoza.cli``).

- :func:`api_command` turns every client-side failure (server unreachable,
  401, 404, 4xx detail, timeouts) into one ``Error: ...`` line saying what to do;
- :func:`table` renders rows in the terminal width (80 columns when not a TTY);
- input parsing for ``gyoza run -i key=value`` and time formatting.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx

from .client import GyozaAPIError, GyozaClient

DEFAULT_WIDTH = 80


class CliFailure(click.ClickException):
    """One ``Error: ...`` line on stderr and exit code 1 (or ``exit_code``)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(text: str, limit: int = 2000) -> str:
    flat = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def client_from(ctx: click.Context) -> GyozaClient:
    """The GyozaClient for ``--server``/``--api-key``, closed when the command ends."""
    obj = ctx.find_root().obj or {}
    client = GyozaClient(obj.get("server", "http://127.0.0.1:5555"), obj.get("api_key"))
    ctx.call_on_close(client.close)
    return client


def explain(exc: Exception, server: str, what: str | None = None) -> str:
    """One line saying what went wrong and what to do about it."""
    if isinstance(exc, GyozaAPIError):
        detail = one_line(exc.detail or exc.code)
        status = exc.status_code
        if status == 401:
            return (
                f"the server at {server} refused the API key (401: {detail}); "
                "check --api-key or GYOZA_API_KEY"
            )
        if status == 404:
            hint = {
                "run": "list runs with `gyoza runs ls`",
                "definition": "list definitions with `gyoza defs ls`",
            }.get(what or "", "")
            # The server's own hint speaks HTTP ("GET /runs"); ours speaks CLI.
            detail = detail.split(";")[0] if hint else detail
            return f"not found: {detail}" + (f" ({hint})" if hint else "")
        if status == 409:
            return f"conflict: {detail}"
        if status == 413:
            return f"request too large for the server (413: {detail})"
        if 400 <= status < 500:
            return f"the server refused the request ({status}): {detail}"
        return f"server error {status} at {server}: {detail}; see the server's log"
    if isinstance(exc, httpx.TimeoutException):
        return f"the gyoza server at {server} did not answer in time ({type(exc).__name__}); is it overloaded or behind a firewall?"
    if isinstance(exc, httpx.TransportError):
        reason = one_line(str(exc)) or type(exc).__name__
        return (
            f"cannot reach the gyoza server at {server} ({reason}); "
            "start one with `gyoza up`, or point --server / GYOZA_URL at yours"
        )
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return f"invalid server URL {server!r} ({exc}); pass e.g. --server http://127.0.0.1:5555"
    return f"{type(exc).__name__}: {one_line(str(exc))}"


def handle_errors(ctx: click.Context, exc: Exception, what: str | None = None) -> CliFailure:
    server = (ctx.find_root().obj or {}).get("server", "?")
    return CliFailure(explain(exc, server, what))


def api_command(what: str | None = None) -> Callable:
    """Decorator: API and connection failures become one ``Error:`` line, exit 1.

    ``what`` ("run", "definition") picks the hint shown on a 404.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (GyozaAPIError, httpx.HTTPError, httpx.InvalidURL) as exc:
                raise handle_errors(click.get_current_context(), exc, what) from None

        return wrapper

    return decorate


# -- output ------------------------------------------------------------------------


def terminal_width() -> int:
    if sys.stdout.isatty():
        return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    return DEFAULT_WIDTH


def truncate(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    flex: Sequence[int] = (),
    width: int | None = None,
) -> str:
    """Left-aligned columns two spaces apart, fitting ``width``.

    Columns listed in ``flex`` shrink (with "…") when the table is too wide,
    last listed first; other columns (ids, states) are never cut.
    """
    width = width or terminal_width()
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    total = sum(widths) + 2 * (len(widths) - 1)
    for i in reversed(list(flex)):
        if total <= width:
            break
        floor = max(len(headers[i]), 6)
        cut = min(total - width, widths[i] - floor)
        if cut > 0:
            widths[i] -= cut
            total -= cut
    lines = []
    for row in cells:
        parts = [truncate(c, w).ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def ago(value: str | None, now: datetime | None = None) -> str:
    """``"5s ago"``, ``"3m ago"``, ``"2h ago"``, ``"4d ago"``; ``"-"`` when unknown."""
    when = parse_time(value)
    if when is None:
        return "-"
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    seconds = max(seconds, 0)
    if seconds < 60:
        return f"{int(seconds)}s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)}m ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h ago"
    return f"{int(seconds // 86400)}d ago"


def duration(start: str | None, end: str | None) -> str:
    a, b = parse_time(start), parse_time(end)
    if a is None:
        return "-"
    seconds = ((b or datetime.now(UTC)) - a).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# -- inputs ------------------------------------------------------------------------


def parse_value(raw: str) -> Any:
    """JSON when it parses (``3``, ``true``, ``[1,2]``, ``{"a":1}``, ``"quoted"``), else the string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_inputs(pairs: Sequence[str], inputs_file: str | None) -> dict[str, Any]:
    """``--inputs-file`` (a JSON object) first, then each ``-i key=value`` on top."""
    inputs: dict[str, Any] = {}
    if inputs_file:
        try:
            loaded = json.loads(Path(inputs_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise CliFailure(f"cannot read --inputs-file {inputs_file} ({exc})") from None
        except ValueError as exc:
            raise CliFailure(f"--inputs-file {inputs_file} is not valid JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise CliFailure(
                f"--inputs-file {inputs_file} must hold a JSON object, not {type(loaded).__name__}"
            )
        inputs.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliFailure(f"-i {pair!r}: expected KEY=VALUE, e.g. -i text=hello -i count=3")
        inputs[key] = parse_value(raw)
    return inputs


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
