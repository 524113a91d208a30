"""The ``gyoza`` command line.

Every failure prints one line on stderr and exits non-zero; tracebacks are
for bugs, and ``main`` turns even those into one line.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .config import ServerConfig


class CliError(click.ClickException):
    """A failure to print as one line (``Error: ...``) with exit code 1."""


def _server_options(fn):
    """Flags shared by ``gyoza server`` and ``gyoza up``."""
    options = [
        click.option("--host", default="127.0.0.1", show_default=True, envvar="GYOZA_HOST"),
        click.option("--port", default=5555, show_default=True, type=int, envvar="GYOZA_PORT"),
        click.option("--db", default="./gyoza.db", show_default=True, envvar="GYOZA_DB",
                     help="SQLite file holding all state."),
        click.option("--api-key", "api_keys", multiple=True,
                     help="Require this X-API-Key (repeatable; env GYOZA_API_KEY, comma-separated)."),
        click.option("--heartbeat-interval", default=5.0, show_default=True, type=float,
                     help="Seconds between worker heartbeats."),
        click.option("--worker-timeout", default=20.0, show_default=True, type=float,
                     help="Seconds of silence before a worker is OFFLINE and its runs LOST."),
        click.option("--max-body-bytes", default=1024 * 1024, show_default=True, type=int),
        click.option("--sync", type=click.Choice(["normal", "full"]), default="normal",
                     show_default=True, help="SQLite durability (see README)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def server_config(**kw: Any) -> ServerConfig:
    import os

    keys = tuple(kw.pop("api_keys", ()) or ())
    if not keys:
        keys = tuple(k.strip() for k in os.environ.get("GYOZA_API_KEY", "").split(",") if k.strip())
    if kw["heartbeat_interval"] <= 0 or kw["worker_timeout"] <= 0:
        raise CliError("--heartbeat-interval and --worker-timeout must be positive")
    if kw["worker_timeout"] <= kw["heartbeat_interval"]:
        raise CliError("--worker-timeout must be longer than --heartbeat-interval")
    return ServerConfig(
        host=kw["host"],
        port=kw["port"],
        db=kw["db"],
        api_keys=keys,
        heartbeat_interval=kw["heartbeat_interval"],
        worker_timeout=kw["worker_timeout"],
        max_body_bytes=kw["max_body_bytes"],
        sync=kw["sync"],
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", "server_url", envvar="GYOZA_URL", default="http://127.0.0.1:5555",
              show_default=True, help="gyoza server URL (env GYOZA_URL).")
@click.option("--api-key", "api_key", envvar="GYOZA_API_KEY", default=None,
              help="API key (env GYOZA_API_KEY).")
@click.version_option(package_name="gyoza")
@click.pass_context
def cli(ctx: click.Context, server_url: str, api_key: str | None) -> None:
    """gyoza: run containerised jobs on your own machines and GPUs."""
    ctx.obj = {"server": server_url.rstrip("/"), "api_key": api_key}


@cli.command()
@_server_options
def server(**kw: Any) -> None:
    """Run the API server only (workers join with `gyoza worker`)."""
    from .server import serve

    serve(server_config(**kw))


def main() -> None:
    try:
        cli(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, never a traceback
        click.echo(f"Error: unexpected {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
