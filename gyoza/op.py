"""Helpers for code running *inside* a gyoza container.

Standard library only, so it can be copied into or imported from any Python
image. The worker reads the container's output: lines starting with
``GYOZA:`` followed by JSON become PROGRESS events and outputs, every other
line is a LOG line. ``print`` is enough to log; these helpers exist so op
authors never hand-write the protocol.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["inputs", "progress", "log", "set_outputs"]

PREFIX = "GYOZA:"
_INPUTS_FILE = "/gyoza/inputs.json"


def inputs() -> dict[str, Any]:
    """The run's inputs (defaults filled in by the server).

    Read from ``GYOZA_INPUTS`` first (always set by the worker), then from
    ``/gyoza/inputs.json``; ``{}`` when run outside gyoza, so op code can be
    tried by hand.
    """
    raw = os.environ.get("GYOZA_INPUTS")
    if raw:
        return json.loads(raw)
    try:
        with open(_INPUTS_FILE, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return {}


def _emit(message: dict[str, Any]) -> None:
    # One write per line and an explicit flush: Python buffers stdout when it
    # is not a terminal, and a buffered progress line is a useless one.
    sys.stdout.write(PREFIX + json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def progress(pct: float) -> None:
    """Report progress, 0..100 (clamped)."""
    value = max(0.0, min(100.0, float(pct)))
    _emit({"type": "PROGRESS", "msg": int(value) if value.is_integer() else value})


def log(msg: str) -> None:
    """Write a log line (the same as ``print``, but always flushed)."""
    sys.stdout.write(f"{msg}\n")
    sys.stdout.flush()


def set_outputs(outputs: dict[str, Any] | None = None, /, **kw: Any) -> None:
    """Merge outputs into the run's outputs: ``set_outputs(score=0.9)`` or ``set_outputs({...})``.

    Later calls override earlier keys; ``/gyoza/outputs.json``, if the op
    writes one, is merged last and wins.
    """
    merged: dict[str, Any] = dict(outputs or {})
    merged.update(kw)
    _emit({"type": "OUTPUTS", "outputs": merged})
