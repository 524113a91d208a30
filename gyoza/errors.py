"""Errors the API answers with, and body decoding that produces them.

Every refusal is a ``GyozaError``: the server turns it into
``{"error": code, "detail": ...}`` with its status, so no input reaches a 500.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


class GyozaError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class BadRequest(GyozaError):
    status = 400
    code = "invalid"


class Locked(BadRequest):
    code = "locked"


class Unauthorized(GyozaError):
    status = 401
    code = "unauthorized"


class NotFound(GyozaError):
    status = 404
    code = "not_found"


class MethodNotAllowed(GyozaError):
    status = 405
    code = "method_not_allowed"


class Conflict(GyozaError):
    status = 409
    code = "stale_attempt"


class PayloadTooLarge(GyozaError):
    status = 413
    code = "too_large"


class UnsupportedMediaType(GyozaError):
    status = 415
    code = "unsupported_media_type"


_decoders: dict[Any, msgspec.json.Decoder] = {}
_PATH = re.compile(r" - at `\$(.*)`$")


def _friendly(message: str) -> str:
    """Turn msgspec's "... - at `$.a.b`" into "a.b: ..."."""
    match = _PATH.search(message)
    if not match:
        return message
    path = match.group(1).lstrip(".") or "body"
    return f"{path}: {message[: match.start()]}"


def decode(body: bytes, type_: type[T], *, what: str = "body") -> T:
    """Decode JSON bytes into ``type_``, or raise a BadRequest naming the field."""
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    if not body.strip():
        raise BadRequest(f"the request {what} is empty; send a JSON object", code="invalid_json")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(_friendly(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the request {what} is not valid JSON ({exc})", code="invalid_json") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the request {what} is not valid UTF-8 (byte {exc.start})", code="invalid_json"
        ) from None
    except RecursionError:
        raise BadRequest(f"the request {what} is nested too deeply", code="invalid_json") from None


def convert(data: Any, type_: type[T]) -> T:
    """Validate already-parsed data (e.g. from TOML) into ``type_``."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise BadRequest(_friendly(str(exc))) from None
