"""Loading, validating and diffing op definition files for ``gyoza deploy``.

An op file is TOML or JSON:

- TOML: one op at the top level, or several as ``[[op]]`` tables;
- JSON: one op object, a list of op objects, or ``{"op": [...]}``.

A folder is searched recursively for ``*.toml`` and ``*.json``, skipping
hidden folders (``.git``, ``.venv``...), ``node_modules``, ``__pycache__`` and
files that are never op files (``pyproject.toml``, ``package.json``...).

Everything here is local: the only server access is through the
``GyozaClient`` passed to :func:`plan`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .errors import BadRequest, convert
from .models import OpDefinition

SKIP_DIRS = frozenset({"node_modules", "__pycache__", "site-packages"})
SKIP_FILES = frozenset(
    {
        "pyproject.toml",
        "Cargo.toml",
        "poetry.lock",
        "package.json",
        "package-lock.json",
        "tsconfig.json",
        "composer.json",
    }
)
SERVER_FIELDS = ("created_at", "updated_at")


@dataclass
class OpSpec:
    """One op definition found in a file, validated or not."""

    file: Path
    index: int  # position in the file, 1-based
    data: Any
    definition: OpDefinition | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        name = self.data.get("name") if isinstance(self.data, dict) else None
        if isinstance(name, str) and name:
            version = self.data.get("version")
            return f"op '{name}'" + (f" version '{version}'" if isinstance(version, str) else "")
        return f"op #{self.index}"

    @property
    def where(self) -> str:
        return f"{self.file}: {self.label}"


@dataclass
class FileError:
    file: Path
    error: str

    @property
    def where(self) -> str:
        return str(self.file)


@dataclass
class Loaded:
    ops: list[OpSpec] = field(default_factory=list)
    errors: list[FileError | OpSpec] = field(default_factory=list)


def find_files(path: Path) -> list[Path]:
    """The op files under ``path`` (a file is returned as is), in a stable order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    found = []
    for candidate in sorted(path.rglob("*")):
        rel = candidate.relative_to(path).parts
        if any(part.startswith(".") or part in SKIP_DIRS for part in rel[:-1]):
            continue
        if rel[-1].startswith(".") or candidate.name in SKIP_FILES:
            continue
        if candidate.suffix in (".toml", ".json") and candidate.is_file():
            found.append(candidate)
    return found


def _documents(file: Path) -> list[Any]:
    """The op objects in one file; raises ValueError with a readable message."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the file ({exc})") from None
    if file.suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc})") from None
        if isinstance(doc, list):
            return doc
        if isinstance(doc, dict) and isinstance(doc.get("op"), list) and len(doc) == 1:
            return doc["op"]
        if isinstance(doc, dict):
            return [doc]
        raise ValueError("expected an op object or a list of op objects")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML ({exc})") from None
    if "op" in doc:
        ops = doc["op"]
        if not isinstance(ops, list):
            raise ValueError("`op` must be an array of tables: write [[op]], not [op]")
        others = sorted(k for k in doc if k != "op")
        if others:
            raise ValueError(
                f"top-level keys {others} next to [[op]] tables: put each op's fields "
                "under its own [[op]] header"
            )
        if not ops:
            raise ValueError("no [[op]] tables in the file")
        return ops
    if not doc:
        raise ValueError("the file is empty: expected an op (name, version, image...)")
    return [doc]


def _hint(detail: str) -> str:
    if detail.startswith("version: Expected `str`"):
        return detail + ' (quote it in TOML: version = "1.0")'
    if detail.startswith("Object missing required field"):
        return "missing required field" + detail[len("Object missing required field"):]
    if detail.startswith("Object contains unknown field"):
        return "unknown field" + detail[len("Object contains unknown field"):] + (
            " (check its spelling against the OpDefinition fields)"
        )
    return detail


def _check_schema(definition: OpDefinition) -> str | None:
    for key in ("input_schema", "output_schema"):
        schema = getattr(definition, key)
        if schema is None:
            continue
        import jsonschema

        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = ".".join(str(p) for p in exc.absolute_path)
            return f"{key}{'.' + where if where else ''}: not a valid JSON Schema ({exc.message})"
    return None


def validate(data: Any) -> tuple[OpDefinition | None, str | None]:
    """``(definition, None)`` or ``(None, "field: what is wrong")``."""
    if not isinstance(data, dict):
        return None, f"expected a table/object of op fields, got {type(data).__name__}"
    try:
        definition = convert(data, OpDefinition)
    except BadRequest as exc:
        return None, _hint(exc.detail)
    problem = _check_schema(definition)
    if problem:
        return None, problem
    return definition, None


def load(path: Path) -> Loaded:
    """Read and validate every op under ``path``; never talks to a server."""
    loaded = Loaded()
    files = find_files(path)
    if not files:
        loaded.errors.append(FileError(path, "no *.toml or *.json op files found"))
        return loaded
    seen: dict[tuple[str, str], OpSpec] = {}
    for file in files:
        try:
            docs = _documents(file)
        except ValueError as exc:
            loaded.errors.append(FileError(file, str(exc)))
            continue
        for index, data in enumerate(docs, start=1):
            spec = OpSpec(file=file, index=index, data=data)
            spec.definition, spec.error = validate(data)
            if spec.definition is not None:
                key = (spec.definition.name, spec.definition.version)
                if key in seen:
                    spec.definition = None
                    spec.error = f"the same name and version is also defined in {seen[key].where}"
                else:
                    seen[key] = spec
            (loaded.ops if spec.error is None else loaded.errors).append(spec)
    return loaded


def normalise(data: dict[str, Any]) -> dict[str, Any]:
    """A definition as comparable data: defaults filled in, server fields and secret dropped."""
    out = convert(data, OpDefinition).to_dict()
    for key in SERVER_FIELDS:
        out.pop(key, None)
    if out.get("event_delivery"):
        out["event_delivery"].pop("secret", None)
    return out


def changed_fields(local: OpDefinition, remote: dict[str, Any]) -> list[str]:
    """Top-level fields that differ between ``local`` and the server's copy.

    The server never returns ``event_delivery.secret``, so a local definition
    that sets one cannot be compared: it always counts as changed
    (``event_delivery.secret``) and is re-sent.
    """
    mine = normalise(local.to_dict())
    known = {f.name for f in msgspec.structs.fields(OpDefinition)}
    try:
        theirs = normalise({k: v for k, v in remote.items() if k in known})
    except BadRequest:
        return ["(server copy unreadable)"]
    fields = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if local.event_delivery is not None and local.event_delivery.secret is not None:
        fields.append("event_delivery.secret")
    return fields


def payload(definition: OpDefinition) -> dict[str, Any]:
    """The JSON body to upsert."""
    data = definition.to_dict()
    for key in SERVER_FIELDS:
        data.pop(key, None)
    return data
