"""JSON logs (decision D11): one JSON object per line with the request context, and PII masked
(DOMAIN.md §8) in messages, extras and tracebacks, by the handler's filter, whatever logged it."""

from __future__ import annotations

import json
import logging

import pytest
from django.conf import settings

from converzia.logging import REDACTED, logging_settings, mask_partial, mask_text
from converzia.tests.logcapture import captured_console
from converzia.tests.test_settings import production_env, run_python

logger = logging.getLogger("converzia.tests.json_logs")

EMAIL = "juana.perez@example.com"
PHONE = "+5491123456789"
BEARER = "cvz_live_abcdef0123456789"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PAGE_TOKEN = "EAABsbCS1iHgBAKZCZ"
RAW_VALUES = (EMAIL, PHONE, BEARER, WEBHOOK_SECRET, PAGE_TOKEN, "Juana Perez", "s3cr3t-pass")


def assert_no_raw_values(text: str) -> None:
    for raw in RAW_VALUES:
        assert raw not in text, f"{raw!r} leaked into the log: {text}"


def test_lines_are_json_with_the_context_fields():
    with captured_console() as output:
        logger.info("plain %s line", "formatted", extra={"query_name": "portal.leads.list", "rows": 3})

    (record,) = output.records()
    assert {"timestamp", "level", "logger", "message", "request_id", "tenant_id", "user_id"} <= set(record)
    assert record["level"] == "INFO"
    assert record["logger"] == "converzia.tests.json_logs"
    assert record["message"] == "plain formatted line"
    assert record["request_id"] == "-"
    assert (record["query_name"], record["rows"]) == ("portal.leads.list", 3)
    assert "T" in record["timestamp"] and record["timestamp"].endswith("+00:00")


def test_personal_data_and_secrets_in_the_message_are_masked():
    with captured_console() as output:
        logger.warning(
            "lead %s <%s> phone %s; Authorization: Bearer %s; GET /v21.0/123?access_token=%s&fields=x; %s",
            "Juana",
            EMAIL,
            PHONE,
            BEARER,
            PAGE_TOKEN,
            WEBHOOK_SECRET,
        )

    assert_no_raw_values(output.text)
    (record,) = output.records()
    message = record["message"]
    assert mask_partial(EMAIL) in message
    assert mask_partial(PHONE) in message
    assert f"Bearer {REDACTED}" in message
    assert f"access_token={REDACTED}&fields=x" in message


def test_known_keys_in_extras_are_masked_at_any_depth():
    with captured_console() as output:
        logger.info(
            "lead stored",
            extra={
                "phone": PHONE,
                "email": EMAIL,
                "full_name": "Juana Perez",
                "password": "s3cr3t-pass",
                "app_secret": WEBHOOK_SECRET,
                "page_access_token": PAGE_TOKEN,
                "details": {"lead": {"name": "Juana Perez", "email": EMAIL}, "notes": [f"call {PHONE}"]},
                "lead_id": "8d0c7f6e",
            },
        )

    assert_no_raw_values(output.text)
    (record,) = output.records()
    assert record["phone"] == mask_partial(PHONE) == "+5***89"
    assert record["email"] == mask_partial(EMAIL)
    assert record["full_name"] == "Ju***ez"
    assert record["password"] == record["app_secret"] == record["page_access_token"] == REDACTED
    assert record["details"]["lead"] == {"name": "Ju***ez", "email": mask_partial(EMAIL)}
    assert record["details"]["notes"] == [f"call {mask_partial(PHONE)}"]
    assert record["lead_id"] == "8d0c7f6e"


def test_tracebacks_are_masked():
    with captured_console() as output:
        try:
            raise ValueError(f"duplicate key (phone)=({PHONE}) for {EMAIL}")
        except ValueError:
            logger.exception("insert failed")

    assert_no_raw_values(output.text)
    (record,) = output.records()
    assert "ValueError" in record["exc_info"]
    assert mask_partial(PHONE) in record["exc_info"]


def test_a_request_line_has_no_token_or_query_string(client_for, owner, tenant):
    client = client_for(owner, tenant)

    with captured_console() as output:
        client.get("/api/portal/offers?access_token=" + PAGE_TOKEN)

    assert_no_raw_values(output.text)
    for record in output.records():
        json.dumps(record)  # every line is plain JSON


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no personal data here: 42 rows in 3.1 ms", "no personal data here: 42 rows in 3.1 ms"),
        ("at 2026-11-29T12:00:00+00:00", "at 2026-11-29T12:00:00+00:00"),
        ("tel +54 9 11 2345-6789 ok", "tel +5***89 ok"),
        ("authorization=Basic dXNlcjpwYXNz", f"authorization=Basic {REDACTED}"),
        ('{"secret": "abc123456"}', f'{{"secret": "{REDACTED}"}}'),
        ("Cookie: sessionid=abc; csrftoken=def", f"Cookie: {REDACTED}"),
        ("bob@example.org wrote", "bo***rg wrote"),
    ],
)
def test_mask_text(text, expected):
    assert mask_text(text) == expected


def test_test_settings_log_json():
    assert settings.LOG_FORMAT == "json"
    assert settings.LOGGING["handlers"]["console"]["formatter"] == "json"
    assert settings.LOGGING["handlers"]["console"]["filters"] == ["request_id", "pii"]


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logging_settings(log_format="xml", level="INFO", procrastinate_level="WARNING")


PRINT_SETUP = (
    "import django, json; django.setup(); from django.conf import settings as s; "
    "print(json.dumps([s.LOGGING['handlers']['console']['formatter'], 'debug_toolbar' in s.INSTALLED_APPS]))"
)


@pytest.mark.parametrize(
    ("module", "extra_env", "expected"),
    [
        ("converzia.settings.production", {}, ["json", False]),
        ("converzia.settings.local", {}, ["console", True]),
        ("converzia.settings.local", {"LOG_FORMAT": "json"}, ["json", True]),
        ("converzia.settings.local", {"DEBUG": "false"}, ["console", False]),
        ("converzia.settings.test", {}, ["json", False]),
    ],
)
def test_log_format_and_debug_toolbar_per_environment(module, extra_env, expected):
    """JSON everywhere but local development; the debug toolbar only in local development with DEBUG."""
    result = run_python(["-c", PRINT_SETUP], production_env(DJANGO_SETTINGS_MODULE=module, **extra_env))

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
