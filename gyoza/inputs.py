"""Run inputs against a definition's ``input_schema`` (JSON Schema).

Validators are compiled once per definition version (keyed by its update
time, so a replaced definition gets a fresh one). Defaults from the schema
are filled in before validation, and every problem is reported at once.

``jsonschema`` is imported on first use: it is the heaviest import of the
server (about half its start-up time) and only definitions with a schema
need it.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import msgspec

from .errors import BadRequest


def _fill_defaults(validator_class):
    from jsonschema import validators

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def check_schema(schema: dict[str, Any] | None, field: str = "input_schema") -> None:
    """Refuse a schema that is not valid JSON Schema (400 naming the problem)."""
    if schema is None:
        return
    import jsonschema
    from jsonschema import validators

    cls = validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise BadRequest(f"{field}: not a valid JSON Schema{' at ' + where if where else ''}: {exc.message}") from None
    except RecursionError:
        raise BadRequest(f"{field}: nested too deeply") from None


@lru_cache(maxsize=512)
def _validators(key: tuple[str, str, str], schema_json: bytes):
    """(filler, checker): the filler's pass sets defaults, the checker's reports."""
    import jsonschema
    from jsonschema import validators
    from referencing import Registry

    schema = msgspec.json.decode(schema_json)
    base = validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    # Only references inside the schema resolve: the server never fetches a
    # URL named by a client's schema (no SSRF, no blocking network I/O).
    registry: Registry = Registry(retrieve=_no_remote_refs)
    return _fill_defaults(base)(schema, registry=registry), base(schema, registry=registry)


def _no_remote_refs(uri: str):
    from referencing.exceptions import NoSuchResource

    raise NoSuchResource(ref=uri)


def validate_inputs(
    key: tuple[str, str, str], schema: dict[str, Any] | None, inputs: dict[str, Any]
) -> dict[str, Any]:
    """Return ``inputs`` with defaults filled, or raise listing every problem."""
    if schema is None:
        return inputs
    from referencing.exceptions import Unresolvable

    filled = copy.deepcopy(inputs)
    filler, checker = _validators(key, msgspec.json.encode(schema))
    try:
        # Defaults first, so "required" never fires for a field that has one.
        for _ in filler.iter_errors(filled):
            pass
        errors = sorted(checker.iter_errors(filled), key=lambda e: [str(p) for p in e.absolute_path])
    except RecursionError:
        raise BadRequest("inputs: nested too deeply (or input_schema refers to itself endlessly)") from None
    except Unresolvable as exc:
        raise BadRequest(
            f"input_schema: cannot resolve $ref ({exc}); only references within the schema are supported"
        ) from None
    if errors:
        problems = []
        for e in errors:
            path = ".".join(str(p) for p in e.absolute_path)
            problems.append(f"inputs{'.' + path if path else ''}: {e.message}")
        raise BadRequest("; ".join(problems), code="invalid_inputs")
    return filled
