"""A CI gate with the Python client: deploy ops, run one, pass or fail on its result.

    python examples/pipeline/pipeline.py --deploy examples/ \\
        --op wordcount -i text="to be or not to be" --expect words=6

1. reads every op file under --deploy (TOML: one op, or [[op]] tables; JSON),
   validates it with ``OpDefinition`` and upserts it;
2. starts a run of --op with the -i inputs;
3. follows it by long-polling its events, printing progress and logs;
4. exits 0 when the run COMPLETED and every --expect key=value matches its
   outputs (value parsed as JSON when it parses), 1 otherwise, 2 on bad usage.

Only ``gyoza.GyozaClient`` and ``gyoza.OpDefinition`` are used: copy this file
into your own CI and adapt it. ``GYOZA_URL`` and ``GYOZA_API_KEY`` are read
from the environment like the CLI does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx

from gyoza import GyozaClient, OpDefinition

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def read_ops(path: Path) -> list[dict[str, Any]]:
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.suffix in (".toml", ".json") and p.is_file()
    )
    ops = []
    for file in files:
        if file.suffix == ".json":
            doc = json.loads(file.read_text())
            docs = doc if isinstance(doc, list) else [doc]
        else:
            doc = tomllib.loads(file.read_text())
            docs = doc["op"] if "op" in doc else [doc]
        for data in docs:
            try:
                ops.append(OpDefinition.from_dict(data).to_dict())  # validates every field
            except Exception as exc:
                raise SystemExit(f"{file}: invalid op definition: {exc}") from None
    return ops


def parse_pairs(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def follow(client: GyozaClient, run_id: str, timeout: float) -> dict[str, Any]:
    """Print events until the run ends (or ``timeout`` seconds pass); return the run."""
    deadline = time.monotonic() + timeout
    after = 0
    while time.monotonic() < deadline:
        events = client.poll_events(run_id, after, wait=20)["events"]
        for event in events:
            after = event["id"]
            if event["type"] == "LOG":
                print(event["msg"])
            elif event["type"] == "PROGRESS":
                print(f"  progress {event['msg']}%")
            else:
                print(f"  {event['type']} -> {event['state']}")
        if events and events[-1]["state"] in TERMINAL:
            break
        if not events and client.get_run(run_id)["state"] in TERMINAL:
            break
    return client.get_run(run_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default=os.environ.get("GYOZA_URL", "http://127.0.0.1:5555"))
    parser.add_argument("--api-key", default=os.environ.get("GYOZA_API_KEY"))
    parser.add_argument("--deploy", type=Path, help="Op file or folder to deploy first.")
    parser.add_argument("--op", required=True, help="Definition to run.")
    parser.add_argument("-i", "--input", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--expect", action="append", default=[], metavar="KEY=VALUE",
                        help="An output the run must produce (repeatable).")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds to wait for the run.")
    args = parser.parse_args(argv)

    with GyozaClient(args.server, api_key=args.api_key) as client:
        try:
            if args.deploy:
                for op in read_ops(args.deploy):
                    client.upsert_definition(op)
                    print(f"deployed {op['name']} {op['version']}")
            run = client.create_run_from_definition(args.op, parse_pairs(args.input))
            print(f"run {run['id']} started")
            run = follow(client, run["id"], args.timeout)
        except httpx.HTTPStatusError as exc:
            print(f"gate: the server refused a request: {exc}", file=sys.stderr)
            return 1
        except httpx.TransportError as exc:
            print(f"gate: cannot reach the gyoza server at {args.server}: {exc}", file=sys.stderr)
            return 1

    if run["state"] != "COMPLETED":
        print(f"gate FAILED: run {run['id']} ended {run['state']}: {run.get('error')}",
              file=sys.stderr)
        return 1
    outputs = run.get("outputs") or {}
    for key, wanted in parse_pairs(args.expect).items():
        if outputs.get(key) != wanted:
            print(f"gate FAILED: output {key!r} is {outputs.get(key)!r}, expected {wanted!r}",
                  file=sys.stderr)
            return 1
    print(f"gate passed: run {run['id']} COMPLETED with outputs {json.dumps(outputs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
