"""Standard Webhooks signing and the ``gyoza.webhooks.verify`` helper (no server)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks

from gyoza.delivery import backoff_delay, parse_retry_after
from gyoza.webhooks import WebhookVerificationError, sign, verify

# The test vector published with the Standard Webhooks spec and its reference libraries.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers_for(secret: str, body: bytes, ts: int | None = None, msg_id: str = "msg_1") -> dict:
    ts = int(time.time()) if ts is None else ts
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


def test_sign_matches_the_published_test_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE


def test_sign_agrees_with_the_standardwebhooks_library() -> None:
    key = base64.b64decode(VECTOR_SECRET.removeprefix("whsec_"))
    theirs = standardwebhooks.Webhook(key).sign(
        VECTOR_ID, datetime.fromtimestamp(VECTOR_TS, UTC), VECTOR_BODY.decode()
    )
    assert theirs == VECTOR_SIGNATURE


def test_plain_string_secret_is_used_as_its_utf8_bytes() -> None:
    body = b'{"a": "\xc3\xa9"}'
    expected = base64.b64encode(
        hmac.new("pässword".encode(), b"msg_x.1700000000." + body, hashlib.sha256).digest()
    ).decode()
    assert sign("pässword", "msg_x", 1700000000, body) == f"v1,{expected}"


def test_verify_returns_the_body_of_a_valid_request() -> None:
    body = b'{"type": "run.COMPLETED"}'
    assert verify("s3cret", headers_for("s3cret", body), body) == {"type": "run.COMPLETED"}


def test_verify_accepts_any_case_of_header_names_and_several_signatures() -> None:
    body = b"{}"
    h = headers_for("s3cret", body)
    h = {k.upper(): v for k, v in h.items()}
    h["WEBHOOK-SIGNATURE"] = "v1,AAAA " + h["WEBHOOK-SIGNATURE"]
    assert verify("s3cret", h, body) == {}


def test_verify_rejects_a_wrong_secret() -> None:
    body = b"{}"
    with pytest.raises(WebhookVerificationError, match="no matching v1 signature"):
        verify("other", headers_for("s3cret", body), body)


def test_verify_rejects_an_altered_body() -> None:
    h = headers_for("s3cret", b'{"n": 1}')
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify("s3cret", h, b'{"n": 2}')


def test_verify_rejects_an_old_timestamp() -> None:
    body = b"{}"
    h = headers_for("s3cret", body, ts=int(time.time()) - 600)
    with pytest.raises(WebhookVerificationError, match="old"):
        verify("s3cret", h, body)
    assert verify("s3cret", h, body, tolerance_s=900) == {}


def test_verify_rejects_missing_headers() -> None:
    with pytest.raises(WebhookVerificationError, match="webhook-signature"):
        verify("s3cret", {"webhook-id": "x", "webhook-timestamp": "1"}, b"{}")


def test_verify_error_is_a_standardwebhooks_error() -> None:
    assert issubclass(WebhookVerificationError, standardwebhooks.WebhookVerificationError)


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    for attempts, nominal in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)):
        for _ in range(50):
            assert nominal * 0.8 <= backoff_delay(attempts, 1.0, 300.0) <= nominal * 1.2
    assert backoff_delay(40, 1.0, 300.0) == 300.0


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == pytest.approx(30.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_webhook_urls_in_logs_carry_no_credentials_or_query_tokens():
    from gyoza.delivery import _safe_url

    logged = _safe_url("https://user:hunter2@hooks.example.com:8443/in?token=abc#frag")
    assert logged == "https://hooks.example.com:8443/in"
