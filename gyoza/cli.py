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


# -- user commands --
# deploy / run / runs / defs / workers: thin wrappers over GyozaClient. Helpers
# live in gyoza.cliutil (errors, tables), gyoza.deploy (op files) and
# gyoza.follow (live output).


import pathlib  # noqa: E402

import httpx  # noqa: E402

from .client import GyozaAPIError  # noqa: E402
from .cliutil import api_command as _api  # noqa: E402
from .cliutil import client_from as _client  # noqa: E402
from .cliutil import dump_json  # noqa: E402


def _json_out(data: Any) -> None:
    click.echo(dump_json(data))


@cli.command()
@click.argument("path", type=click.Path(path_type=pathlib.Path))
@click.option("--dry-run", is_flag=True, help="Validate and show what would change; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result per op as JSON.")
@click.pass_context
def deploy(ctx: click.Context, path, dry_run: bool, as_json: bool) -> None:
    """Upsert every op definition in PATH (a TOML/JSON file or a folder).

    Every definition is validated locally first; if any is invalid nothing is
    sent. Prints one line per op: created, updated or unchanged (unchanged ops
    are not re-sent). With --dry-run, when the server cannot be reached the
    definitions are still validated, a warning says they were not compared,
    and the exit code reflects validation alone.
    """
    from . import cliutil
    from . import deploy as dep

    try:
        loaded = dep.load(path)
    except FileNotFoundError as exc:
        raise cliutil.CliFailure(f"{exc}; pass an op file or a folder of them") from None
    for bad in loaded.errors:
        click.echo(f"Error: {bad.where}: {cliutil.one_line(bad.error)}", err=True)
    if loaded.errors:
        raise cliutil.CliFailure(
            f"{len(loaded.errors)} invalid op definition(s) in {path}; nothing was deployed"
        )
    client = cliutil.client_from(ctx)
    server = ctx.obj["server"]
    results: list[dict[str, Any]] = []
    failed = 0
    offline = False
    for spec in loaded.ops:
        op = spec.definition
        assert op is not None
        row: dict[str, Any] = {"name": op.name, "version": op.version, "file": str(spec.file)}
        try:
            if offline:
                raise httpx.ConnectError("unreachable")
            try:
                remote = client.get_definition(op.name, op.version)
            except GyozaAPIError as exc:
                if exc.status_code != 404:
                    raise
                remote = None
            if remote is None:
                status, changed = "created", []
            else:
                changed = dep.changed_fields(op, remote)
                status = "updated" if changed else "unchanged"
            if not dry_run and status != "unchanged":
                client.upsert_definition(dep.payload(op))
        except (httpx.TransportError, GyozaAPIError) as exc:
            if dry_run and isinstance(exc, httpx.TransportError):
                offline = True
                status, changed = "valid", []
            else:
                message = cliutil.explain(exc, server, None)
                if isinstance(exc, httpx.TransportError) or exc.status_code == 401:
                    raise cliutil.CliFailure(message) from None
                failed += 1
                click.echo(f"Error: {spec.where}: {message}", err=True)
                row.update(status="failed", error=message)
                results.append(row)
                continue
        if dry_run and status in ("created", "updated"):
            status = "would " + status[:-1]  # "would create" / "would update"
        row.update(status=status, changed=changed)
        results.append(row)
        if not as_json:
            detail = f" ({', '.join(changed)})" if changed else ""
            click.echo(f"{status:<13} {op.name} {op.version}{detail}  [{spec.file}]")
    if offline:
        click.echo(
            f"Warning: cannot reach the gyoza server at {server}; definitions were validated "
            "locally but not compared (start it with `gyoza up` or set --server)",
            err=True,
        )
    if as_json:
        _json_out(results)
    if failed:
        raise cliutil.CliFailure(f"{failed} of {len(loaded.ops)} op(s) failed to deploy")


@cli.command("run")
@click.argument("name", required=False)
@click.option("--version", "op_version", help="Definition version (default: latest).")
@click.option("--image", help="Run this Docker image ad hoc, without a definition.")
@click.option("-i", "--input", "input_pairs", multiple=True, metavar="KEY=VALUE",
              help="An input; VALUE is parsed as JSON when it parses, else a string. Repeatable.")
@click.option("--inputs-file", type=click.Path(dir_okay=False),
              help="A JSON object of inputs (-i values override it).")
@click.option("--priority", type=click.IntRange(0, 100), default=5, show_default=True,
              help="0..100, higher runs first.")
@click.option("-f", "--follow", is_flag=True,
              help="Show progress, logs and state changes until the run ends; exit 0 on COMPLETED.")
@click.option("--cancel-on-interrupt", is_flag=True,
              help="With --follow: cancel the run on Ctrl-C (default: leave it running).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the run as JSON (the final run with --follow; progress goes to stderr).")
@click.pass_context
def run_cmd(ctx: click.Context, name: str | None, op_version: str | None, image: str | None,
            input_pairs: tuple[str, ...], inputs_file: str | None, priority: int, follow: bool,
            cancel_on_interrupt: bool, as_json: bool) -> None:
    """Start a run of definition NAME (or of --image IMG).

    \b
    Examples:
      gyoza run wordcount -i text="to be or not to be" --follow
      gyoza run --image busybox:latest --json
    Exit codes with --follow: 0 COMPLETED, 1 FAILED or CANCELLED, 130 Ctrl-C.
    """
    from . import cliutil

    if bool(name) == bool(image):
        raise click.UsageError("give either a definition NAME or --image IMG (not both)")
    if image and op_version:
        raise click.UsageError("--version applies to a definition NAME, not to --image")
    if cancel_on_interrupt and not follow:
        raise click.UsageError("--cancel-on-interrupt needs --follow")
    inputs = cliutil.parse_inputs(input_pairs, inputs_file)
    _start_run(ctx, name, op_version, image, inputs, priority, follow, cancel_on_interrupt, as_json)


def _start_run(ctx, name, op_version, image, inputs, priority, follow, cancel_on_interrupt, as_json):
    from . import cliutil

    client = cliutil.client_from(ctx)
    try:
        if image:
            run = client.create_run(image, inputs, priority=priority)
        else:
            run = client.create_run_from_definition(
                name, inputs, version=op_version, priority=priority
            )
    except (GyozaAPIError, httpx.HTTPError) as exc:
        raise cliutil.handle_errors(ctx, exc, "definition") from None
    if not follow:
        if as_json:
            _json_out(run)
        else:
            what = f"{run.get('definition')} {run.get('version')}" if run.get("definition") else run.get("image")
            click.echo(f"run {run['id']} {run['state']} ({what})")
            click.echo(f"follow it with: gyoza runs logs --follow {run['id']}", err=True)
        return
    if not as_json:
        click.echo(f"run {run['id']} {run['state']}; following (Ctrl-C stops following)")
    _follow_run(ctx, client, run["id"], cancel_on_interrupt=cancel_on_interrupt, as_json=as_json)


def _follow_run(ctx, client, run_id: str, *, cancel_on_interrupt: bool = False,
                as_json: bool = False, logs_only: bool = False) -> None:
    import sys

    from . import cliutil, follow

    stream = sys.stderr if as_json else sys.stdout
    renderer = follow.Renderer(stream, tty=stream.isatty(), logs_only=logs_only)
    try:
        final = follow.follow(client, run_id, renderer,
                              notice=lambda m: click.echo(f"gyoza: {m}", err=True))
    except KeyboardInterrupt:
        renderer.close()
        if cancel_on_interrupt:
            try:
                client.cancel_run(run_id)
                click.echo(f"interrupted: run {run_id} cancelled", err=True)
            except (GyozaAPIError, httpx.HTTPError) as exc:
                server = ctx.find_root().obj["server"]
                click.echo(f"interrupted; could not cancel run {run_id}: "
                           f"{cliutil.explain(exc, server, 'run')}", err=True)
        else:
            click.echo(f"interrupted: run {run_id} keeps running; stop it with "
                       f"`gyoza runs cancel {run_id}`", err=True)
        ctx.exit(130)
    except (GyozaAPIError, httpx.HTTPError) as exc:
        raise cliutil.handle_errors(ctx, exc, "run") from None
    if as_json:
        _json_out(final)
    elif not logs_only:
        click.echo(follow.summary(final))
    ctx.exit(0 if final.get("state") == "COMPLETED" else 1)


@cli.group(invoke_without_command=True)
@click.pass_context
def runs(ctx: click.Context) -> None:
    """List, inspect, cancel and retry runs (`gyoza runs` alone: `runs ls`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(runs_ls)


def _run_row(run: dict[str, Any]) -> list[Any]:
    from .cliutil import ago

    what = run.get("definition") or run.get("image") or ""
    if run.get("definition") and run.get("version"):
        what = f"{what}:{run['version']}"
    return [run["id"], run["state"], run.get("attempt", ""),
            ago(run.get("created_at")).removesuffix(" ago"), what]


@runs.command("ls")
@click.option("--state", type=click.Choice(
    ["PENDING", "ASSIGNED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"], case_sensitive=False))
@click.option("--definition", help="Only runs of this definition name.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
@click.pass_context
@_api("run")
def runs_ls(ctx: click.Context, state: str | None, definition: str | None, limit: int,
            as_json: bool) -> None:
    """Runs, newest first."""
    from .cliutil import table

    page = _client(ctx).list_runs(state=state.upper() if state else None,
                                  definition=definition, limit=limit)
    if as_json:
        _json_out(page)
        return
    rows = [_run_row(r) for r in page.get("runs", [])]
    if not rows:
        click.echo("no runs" + (" match" if state or definition else " yet; start one with `gyoza run`"))
        return
    click.echo(table(["ID", "STATE", "TRY", "AGE", "OP"], rows, flex=[4]))
    if page.get("next_cursor"):
        click.echo(f"(more: raise --limit; showing the newest {len(rows)})", err=True)


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run, events and attempts as JSON.")
@click.pass_context
@_api("run")
def runs_show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """One run: state, placement, inputs, outputs, attempts."""
    from .cliutil import duration, table

    run = _client(ctx).get_run(run_id)
    if as_json:
        _json_out(run)
        return
    policy = run.get("retry_policy") or {}
    what = run.get("definition") and f"{run['definition']} {run.get('version')}"
    fields = [
        ("id", run["id"]),
        ("op", what or "(ad hoc)"),
        ("image", run.get("image")),
        ("state", run["state"]),
        ("attempt", f"{run.get('attempt')} of {policy.get('max_attempts', '?')}"),
        ("priority", run.get("priority")),
        ("worker", run.get("worker_id") or "-"),
        ("gpus", ",".join(str(g) for g in run.get("gpu_ids") or []) or "-"),
        ("created", run.get("created_at")),
        ("started", run.get("started_at") or "-"),
        ("finished", run.get("finished_at") or "-"),
        ("duration", duration(run.get("started_at"), run.get("finished_at"))
         if run.get("started_at") else "-"),
        ("scheduling", run.get("scheduling")),
        # A run that succeeded on a later attempt may still carry an earlier error.
        ("error" if run["state"] in ("FAILED", "CANCELLED") else "prev error", run.get("error")),
        ("inputs", _compact_json(run.get("inputs"))),
        ("outputs", _compact_json(run.get("outputs")) if run.get("outputs") is not None else None),
    ]
    for key, value in fields:
        if value is None or value == "":
            continue
        lines = str(value).splitlines() or [""]
        click.echo(f"{key + ':':<12}{lines[0]}")
        for extra in lines[1:]:
            click.echo(f"{'':<12}{extra}")
    attempts = run.get("attempts") or []
    if attempts:
        click.echo("")
        rows = [[a.get("number"), a.get("state"), a.get("reason") or "-", a.get("worker_id") or "-",
                 duration(a.get("started_at"), a.get("finished_at")) if a.get("started_at") else "-",
                 (a.get("error") or "").splitlines()[0] if a.get("error") else ""]
                for a in attempts]
        click.echo(table(["TRY", "STATE", "REASON", "WORKER", "TOOK", "ERROR"], rows, flex=[5, 3]))
    logs = sum(1 for e in run.get("events") or [] if e.get("type") == "LOG")
    if logs:
        click.echo(f"\n{logs} log event(s): gyoza runs logs {run['id']}")


def _compact_json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


@runs.command("logs")
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True,
              help="Keep streaming until the run ends; exit 0 on COMPLETED, 1 otherwise.")
@click.pass_context
@_api("run")
def runs_logs(ctx: click.Context, run_id: str, follow: bool) -> None:
    """The run's log lines (LOG events), oldest first."""
    client = _client(ctx)
    if follow:
        _follow_run(ctx, client, run_id, logs_only=True)
        return
    for event in client.poll_events(run_id, 0).get("events", []):
        if event.get("type") == "LOG":
            for line in str(event.get("msg", "")).splitlines():
                click.echo(line)


@runs.command("cancel")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_api("run")
def runs_cancel(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Cancel a run; its worker stops the container."""
    run = _client(ctx).cancel_run(run_id)
    if as_json:
        _json_out(run)
    else:
        click.echo(f"run {run['id']} {run['state']}")


@runs.command("retry")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_api("run")
def runs_retry(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Requeue a FAILED or CANCELLED run as a new attempt."""
    run = _client(ctx).retry_run(run_id)
    if as_json:
        _json_out(run)
    else:
        click.echo(f"run {run['id']} {run['state']} (attempt {run.get('attempt')})")


@cli.group(invoke_without_command=True)
@click.pass_context
def defs(ctx: click.Context) -> None:
    """List and inspect op definitions (`gyoza defs` alone: `defs ls`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(defs_ls)


@defs.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print every definition as JSON.")
@click.pass_context
@_api("definition")
def defs_ls(ctx: click.Context, as_json: bool) -> None:
    """Every definition and version; * marks each name's latest version."""
    from .cliutil import ago, table

    items = _client(ctx).list_definitions()
    if as_json:
        _json_out(items)
        return
    if not items:
        click.echo("no definitions yet; add some with `gyoza deploy PATH`")
        return
    latest: dict[str, dict[str, Any]] = {}
    for d in items:
        best = latest.get(d["name"])
        if best is None or (d.get("created_at") or "") >= (best.get("created_at") or ""):
            latest[d["name"]] = d
    rows = []
    for d in sorted(items, key=lambda d: (d["name"], d.get("created_at") or "")):
        c = d.get("constraints") or {}
        need = f"{c.get('cpu_cores', '?')}cpu {c.get('ram_mb', '?')}MB"
        if c.get("gpus"):
            need += f" {c['gpus']}gpu"
        mark = "*" if latest.get(d["name"]) is d else ""
        rows.append([d["name"], d["version"] + mark, need, ago(d.get("updated_at")), d["image"]])
    click.echo(table(["NAME", "VERSION", "NEEDS", "UPDATED", "IMAGE"], rows, flex=[4, 0, 1]))


@defs.command("show")
@click.argument("name")
@click.option("--version", "op_version", help="This version (default: latest).")
@click.option("--json", "as_json", is_flag=True, help="Print the definition as JSON (deployable).")
@click.pass_context
@_api("definition")
def defs_show(ctx: click.Context, name: str, op_version: str | None, as_json: bool) -> None:
    """One definition (latest version unless --version)."""
    d = _client(ctx).get_definition(name, op_version)
    if as_json:
        _json_out(d)
        return
    c = d.get("constraints") or {}
    r = d.get("retry_policy") or {}
    needs = f"{c.get('cpu_cores')} CPU, {c.get('ram_mb')} MB RAM"
    if c.get("gpus"):
        needs += f", {c['gpus']} GPU" + (f" with >= {c['vram_mb']} MB" if c.get("vram_mb") else "")
        if c.get("gpu_tags"):
            needs += f" tagged {','.join(c['gpu_tags'])}"
    if c.get("tags"):
        needs += f"; worker tags {','.join(c['tags'])}"
    fields = [
        ("name", d["name"]),
        ("version", d["version"]),
        ("image", d["image"]),
        ("description", d.get("description")),
        ("command", _compact_json(d["command"]) if d.get("command") is not None else None),
        ("env", _compact_json(d["env"]) if d.get("env") else None),
        ("needs", needs),
        ("timeout", f"{d['timeout_s']}s" if d.get("timeout_s") else None),
        ("retries", f"max {r.get('max_attempts')} attempts, on {','.join(r.get('retry_on') or []) or '-'}, "
                    f"backoff {r.get('backoff_s')}s x{r.get('backoff_factor')}"),
        ("webhook", (d.get("event_delivery") or {}).get("url")),
        ("updated", d.get("updated_at")),
    ]
    for key, value in fields:
        if value:
            click.echo(f"{key + ':':<13}{value}")
    for key in ("input_schema", "output_schema"):
        props = (d.get(key) or {}).get("properties") or {}
        if props:
            required = set((d.get(key) or {}).get("required") or [])
            click.echo(f"{key.split('_')[0] + 's:'}")
            for prop, schema in props.items():
                kind = schema.get("type", "any") if isinstance(schema, dict) else "any"
                extra = " (required)" if prop in required else ""
                if isinstance(schema, dict) and "default" in schema:
                    extra += f" = {_compact_json(schema['default'])}"
                click.echo(f"  {prop}: {kind}{extra}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the workers as JSON.")
@click.pass_context
@_api()
def workers(ctx: click.Context, as_json: bool) -> None:
    """Workers the server has seen, with free/total resources."""
    from .cliutil import ago, table

    items = _client(ctx).list_workers()
    if as_json:
        _json_out(items)
        return
    if not items:
        click.echo("no workers yet; `gyoza up` embeds one, or run `gyoza worker --server URL`")
        return
    rows = []
    for w in items:
        res, free = w.get("resources") or {}, w.get("free") or {}
        gpus = res.get("gpus") or []
        rows.append([
            w["worker_id"], w.get("status"),
            f"{_num(free.get('cpu_cores'))}/{_num(res.get('cpu_cores'))}",
            f"{_gb(free.get('ram_mb'))}/{_gb(res.get('ram_mb'))}",
            f"{len(free.get('gpu_ids') or [])}/{len(gpus)}" if gpus else "-",
            len(w.get("running_ops") or []),
            ago(w.get("last_heartbeat_at")),
        ])
    click.echo(table(["WORKER", "STATUS", "CPU", "RAM GB", "GPU", "RUNS", "SEEN"], rows, flex=[0]))


def _num(value: Any) -> str:
    if value is None:
        return "?"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _gb(mb: Any) -> str:
    return "?" if mb is None else f"{mb / 1024:.1f}"

# -- end of user commands --


# -- worker commands --


def _worker_flags(fn):
    """Flags shared by ``gyoza worker`` and ``gyoza up`` (the embedded worker)."""
    options = [
        click.option("--worker-id", default=None, envvar="GYOZA_WORKER_ID",
                     help="Worker id (default: hostname plus a suffix saved on this machine)."),
        click.option("--tags", default="", help="Comma-separated worker tags, e.g. gpu,fast."),
        click.option("--gpu-tags", default="",
                     help="Tags per GPU index: 0=rtx,1=a100+fast ('+' joins tags of one GPU)."),
        click.option("--max-ops", type=click.IntRange(min=1), default=None,
                     help="Run at most N ops at once (default: as many as resources allow)."),
        click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0,
                     show_default=True,
                     help="On SIGTERM, seconds to let running ops finish before stopping them."),
        click.option("--cpu-cores", type=click.FloatRange(min=0), default=None,
                     help="CPU cores to offer (default: all, detected)."),
        click.option("--ram-mb", type=click.IntRange(min=0), default=None,
                     help="RAM in MB to offer (default: all, detected)."),
        click.option("--claim-wait", type=click.FloatRange(min=0, max=25), default=20.0,
                     hidden=True, help="Seconds one claim long-poll waits (tests shorten it)."),
        click.option("--state-dir", type=click.Path(file_okay=False), default=None,
                     envvar="GYOZA_STATE_DIR",
                     help="Folder for the worker id and run folders (default: user data dir)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


_WORKER_KEYS = ("worker_id", "tags", "gpu_tags", "max_ops", "drain_timeout", "cpu_cores",
                "ram_mb", "claim_wait", "state_dir")


def _worker_options(kw: dict[str, Any], *, server: str, api_key: str | None,
                    heartbeat_interval: float):
    """Build WorkerOptions from the CLI flags, or fail with one line."""
    import pathlib

    from .resources import parse_gpu_tags
    from .worker import WorkerOptions

    try:
        gpu_tags = parse_gpu_tags(kw["gpu_tags"])
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if heartbeat_interval <= 0:
        raise CliError("--heartbeat-interval must be positive")
    return WorkerOptions(
        server=server,
        api_key=api_key,
        worker_id=kw["worker_id"],
        tags=[t.strip() for t in (kw["tags"] or "").split(",") if t.strip()],
        gpu_tags=gpu_tags,
        max_ops=kw["max_ops"],
        drain_timeout=kw["drain_timeout"],
        cpu_cores=kw["cpu_cores"],
        ram_mb=kw["ram_mb"],
        heartbeat_interval=heartbeat_interval,
        claim_wait=kw["claim_wait"],
        state_dir=pathlib.Path(kw["state_dir"]) if kw["state_dir"] else None,
    )


def _configure_worker_logging() -> None:
    from .server import configure_logging

    configure_logging()


@cli.command("worker")
@click.option("--server", "server_url", default=None,
              help="gyoza server URL (default: the global --server / GYOZA_URL).")
@click.option("--api-key", "worker_api_key", default=None,
              help="API key (default: the global --api-key / GYOZA_API_KEY).")
@click.option("--heartbeat-interval", default=5.0, show_default=True, type=float,
              help="Seconds between heartbeats (keep it equal to the server's).")
@_worker_flags
@click.pass_context
def worker_cmd(ctx: click.Context, server_url: str | None, worker_api_key: str | None,
               heartbeat_interval: float, **kw: Any) -> None:
    """Run containers for a gyoza server (SIGTERM drains, a second one stops ops)."""
    import asyncio

    from .worker import WorkerRefused, run_worker

    options = _worker_options(
        kw,
        server=(server_url or ctx.obj["server"]).rstrip("/"),
        api_key=worker_api_key or ctx.obj["api_key"],
        heartbeat_interval=heartbeat_interval,
    )
    _configure_worker_logging()
    try:
        asyncio.run(run_worker(options))
    except WorkerRefused as exc:
        raise CliError(str(exc)) from None


def _loopback_url(config: ServerConfig) -> str:
    """How the embedded worker reaches its own server."""
    host = config.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{config.port}"


@cli.command()
@_server_options
@_worker_flags
def up(**kw: Any) -> None:
    """Run the server with an embedded worker: one machine, one command."""
    import logging

    from .server import serve
    from .worker import Worker

    worker_kw = {k: kw.pop(k) for k in _WORKER_KEYS}
    config = server_config(**kw)
    options = _worker_options(
        worker_kw,
        server=_loopback_url(config),
        api_key=config.api_keys[0] if config.api_keys else None,
        heartbeat_interval=config.heartbeat_interval,
    )

    import asyncio

    worker = Worker(options)
    finished = asyncio.Event()

    async def embedded_worker(_config: ServerConfig) -> None:
        # Started in the server's lifespan (same event loop); its first
        # heartbeats retry until uvicorn is listening.
        try:
            await worker.run()
        except Exception:
            logging.getLogger("gyoza.worker").exception("the embedded worker stopped")
        finally:
            finished.set()

    async def drain_worker() -> None:
        # At shutdown, while the server still answers: stop claiming, let
        # running ops finish (up to --drain-timeout) and report them.
        worker.request_shutdown()
        await finished.wait()

    serve(config, background=[embedded_worker], drains=[drain_worker])

# -- end of worker commands --


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
