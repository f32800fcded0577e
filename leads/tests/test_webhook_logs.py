"""What the Meta webhook logs when it refuses a request: one WARNING line per request, with the reason.

The access line (`converzia.access`, INFO) is logged for every request and stays; Django's own
`django.request` "Forbidden: /…" line must not repeat the refusal.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

import pytest
from django.test import Client, override_settings

from leads.tests.test_webhook import SIGNED_BODY, URL, assert_error, post

pytestmark = pytest.mark.django_db

SECRET = "test-app-secret"  # converzia.settings.test


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def request_records(caplog: pytest.LogCaptureFixture, send: Any) -> tuple[Any, list[logging.LogRecord]]:
    """The response and every record logged while one request ran."""
    caplog.set_level(logging.INFO)
    caplog.clear()
    response = send()
    return response, list(caplog.records)


def the_refusal(records: list[logging.LogRecord]) -> logging.LogRecord:
    """Exactly one WARNING-or-worse record, the webhook's, next to the one access line."""
    assert sorted(record.name for record in records) == ["converzia.access", "converzia.webhooks"], [
        (record.name, record.getMessage()) for record in records
    ]
    (refusal,) = [record for record in records if record.levelno >= logging.WARNING]
    assert refusal.name == "converzia.webhooks"
    assert refusal.levelno == logging.WARNING
    return refusal


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        pytest.param(
            sign(SIGNED_BODY, "another-secret"), "the signature does not match the body", id="wrong"
        ),
        pytest.param(None, "no X-Hub-Signature-256 header", id="missing"),
        pytest.param(
            "sha1=" + hmac.new(SECRET.encode(), SIGNED_BODY, hashlib.sha1).hexdigest(),
            "the X-Hub-Signature-256 header is not sha256=<hex>",
            id="sha1",
        ),
    ],
)
def test_a_refused_signature_is_logged_once_with_its_reason(
    client: Client, caplog: pytest.LogCaptureFixture, signature: str | None, reason: str
) -> None:
    response, records = request_records(caplog, lambda: post(client, SIGNED_BODY, signature))

    assert_error(response, 403, "invalid_signature")
    refusal = the_refusal(records)
    assert refusal.reason.startswith(reason)
    assert reason in refusal.getMessage()
    assert "invalid_signature" in refusal.getMessage()
    assert (refusal.status, refusal.code, refusal.bytes) == (403, "invalid_signature", len(SIGNED_BODY))


@override_settings(META_APP_SECRET="")
def test_an_unset_app_secret_is_logged_as_the_cause_and_never_told_to_the_caller(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    response, records = request_records(caplog, lambda: post(client, SIGNED_BODY, sign(SIGNED_BODY)))

    error = assert_error(response, 403, "invalid_signature")
    refusal = the_refusal(records)
    assert "META_APP_SECRET is not set" in refusal.getMessage()
    assert "every signature check fails" in refusal.reason
    # The answer is the one any bad signature gets: nothing about our configuration.
    with override_settings(META_APP_SECRET=SECRET):
        wrong = assert_error(
            post(client, SIGNED_BODY, sign(SIGNED_BODY, "another-secret")), 403, "invalid_signature"
        )
    assert {**error, "request_id": None} == {**wrong, "request_id": None}
    assert b"META_APP_SECRET" not in response.content


def test_a_refused_verification_is_logged_once_with_its_reason(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"}

    response, records = request_records(caplog, lambda: client.get(URL, query))

    assert_error(response, 403, "forbidden")
    refusal = the_refusal(records)
    assert refusal.reason == "hub.verify_token does not match"
    assert refusal.token_matched is False


@override_settings(META_WEBHOOK_VERIFY_TOKEN="")
def test_an_unset_verify_token_is_logged_as_the_cause(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": "test-verify-token", "hub.challenge": "1"}

    response, records = request_records(caplog, lambda: client.get(URL, query))

    assert_error(response, 403, "forbidden")
    assert "META_WEBHOOK_VERIFY_TOKEN is not set" in the_refusal(records).reason


def test_a_signed_body_that_is_not_json_is_logged_once_with_its_reason(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    body = b"not json"

    response, records = request_records(caplog, lambda: post(client, body, sign(body)))

    assert_error(response, 400, "invalid_input")
    assert the_refusal(records).reason == "The body is not valid JSON."


@override_settings(META_WEBHOOK_MAX_BODY_BYTES=16)
def test_a_body_too_large_is_logged_once_with_its_reason(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    response, records = request_records(caplog, lambda: post(client, SIGNED_BODY, sign(SIGNED_BODY)))

    assert_error(response, 413, "invalid_input")
    assert the_refusal(records).reason == "The body exceeds 16 bytes."
