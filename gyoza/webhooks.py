"""Standard Webhooks signing and verification (https://www.standardwebhooks.com).

gyoza signs each webhook it sends (``sign``); receivers written in Python can
check a request with ``verify``::

    from gyoza.webhooks import verify, WebhookVerificationError

    try:
        message = verify(SECRET, request.headers, await request.body())
    except WebhookVerificationError:
        return Response(status_code=401)

The signature is ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
The key is the base64-decoded remainder of a ``whsec_...`` secret (the
Standard Webhooks convention) or, for any other string, its UTF-8 bytes.

The ``standardwebhooks`` package always base64-decodes string secrets, so a
plain-string secret would be refused or misread; the few lines of ``hmac``
here are checked against the spec's published test vector in the tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import standardwebhooks

__all__ = ["sign", "verify", "secret_key", "WebhookVerificationError"]

SECRET_PREFIX = "whsec_"


class WebhookVerificationError(standardwebhooks.WebhookVerificationError):
    """The request is not a valid gyoza webhook (bad or missing signature, stale timestamp).

    A subclass of ``standardwebhooks.WebhookVerificationError``, so code that
    catches that one catches this one too.
    """


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a secret: ``whsec_<base64>`` decoded, other strings as UTF-8."""
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith(SECRET_PREFIX):
        raw = secret[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    else:
        key = secret.encode("utf-8")
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    to_sign = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(secret_key(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: float = 300,
) -> dict[str, Any]:
    """Check a webhook request and return its decoded JSON body.

    ``headers`` is any mapping (a Starlette/Flask/Django headers object or a
    dict; names are matched case-insensitively). Raises
    ``WebhookVerificationError`` when a header is missing, the timestamp is
    more than ``tolerance_s`` seconds away from now (replay protection), or
    no ``v1`` signature matches.
    """
    if isinstance(body, str):
        body = body.encode("utf-8")
    lower = {str(k).lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    timestamp = lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature")
    missing = [
        name
        for name, value in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signatures),
        )
        if not value
    ]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    try:
        ts = int(str(timestamp).strip())
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    now = time.time()
    if ts < now - tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp is {now - ts:.0f}s old (tolerance {tolerance_s:.0f}s): "
            "a replay, or a clock out of sync"
        )
    if ts > now + tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp is {ts - now:.0f}s in the future (tolerance {tolerance_s:.0f}s)"
        )
    expected = sign(secret, str(msg_id), ts, body).split(",", 1)[1].encode()
    for candidate in str(signatures).split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            try:
                return json.loads(body)
            except ValueError:
                raise WebhookVerificationError("the signed body is not JSON") from None
    raise WebhookVerificationError("no matching v1 signature (wrong secret or altered body)")
