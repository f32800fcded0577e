"""`/api/webhooks/meta-leads` over HTTP: the subscription handshake, signatures over the raw bytes, payload
validation after the signature, the durable inbox write with its job in one transaction, the body and
batch limits, and a 503 inside Meta's 5 s budget when the database cannot be reached (API.md "Webhooks",
DOMAIN.md §5.1-5.2, decision D4)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.db import DatabaseError, connection, connections
from django.test import Client

from leads import ingestion
from leads.models import InboxChange, InboxEvent, InboxEventStatus

pytestmark = pytest.mark.django_db

URL = "/api/webhooks/meta-leads"
VECTORS = json.loads((Path(__file__).parent / "data" / "meta_webhooks.json").read_text())
APP_SECRET: str = VECTORS["app_secret"]
CASES: dict[str, dict[str, Any]] = {case["name"]: case for case in VECTORS["cases"]}
ERROR_KEYS = {"code", "message", "details", "request_id"}


# --- Helpers -------------------------------------------------------------------------------------------


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    """Meta's header, computed here independently of `leads.meta`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(client: Client, body: bytes, signature: str | None, **extra: str) -> Any:
    headers = dict(extra)
    if signature is not None:
        headers["HTTP_X_HUB_SIGNATURE_256"] = signature
    return client.post(URL, data=body, content_type="application/json", **headers)


def post_signed(client: Client, body: bytes, **extra: str) -> Any:
    return post(client, body, sign(body), **extra)


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def leadgen_change(leadgen_id: Any, **value: Any) -> dict[str, Any]:
    return {"field": "leadgen", "value": {"leadgen_id": leadgen_id, "ad_id": "44444444444", **value}}


def page_payload(*entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "page",
        "entry": [{"id": "153125381133", "time": 1764410000, "changes": changes} for changes in entries],
    }


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The API's one error shape, with the request id of the X-Request-ID header."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == ERROR_KEYS
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    assert error["request_id"] and error["request_id"] == response["X-Request-ID"]
    return error


def job_rows(after_id: int) -> list[tuple[str, dict[str, Any], str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT task_name, args, status, queueing_lock FROM procrastinate_jobs WHERE id > %s ORDER BY id",
            [after_id],
        )
        # Django's cursor reads jsonb as text.
        return [(name, json.loads(args), status, lock) for name, args, status, lock in cursor.fetchall()]


@pytest.fixture
def jobs_before() -> int:
    """The newest job id before the test: procrastinate's tables are unmanaged, so a transactional test
    elsewhere may leave rows behind; only rows after this id belong to the test."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM procrastinate_jobs")
        return cursor.fetchone()[0]


@pytest.fixture
def assert_nothing_stored(jobs_before: int) -> Callable[[], None]:
    def check() -> None:
        assert InboxEvent.objects.count() == 0
        assert InboxChange.objects.count() == 0
        assert job_rows(jobs_before) == []

    return check


@pytest.fixture(autouse=True)
def app_secret(settings) -> None:
    settings.META_APP_SECRET = APP_SECRET


# --- GET: the subscription handshake ---------------------------------------------------------------------


@pytest.mark.parametrize("challenge", ["1158201444", "a-Challenge_with.chars~9"])
def test_handshake_echoes_the_exact_challenge_as_text(client: Client, challenge: str) -> None:
    response = client.get(
        URL, {"hub.mode": "subscribe", "hub.verify_token": "test-verify-token", "hub.challenge": challenge}
    )

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response.content == challenge.encode()


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(
            {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "42"}, id="wrong-token"
        ),
        pytest.param(
            {"hub.mode": "subscribe", "hub.verify_token": "test-verify-toke", "hub.challenge": "42"},
            id="token-prefix",
        ),
        pytest.param({"hub.mode": "subscribe", "hub.challenge": "42"}, id="missing-token"),
        pytest.param(
            {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "42"}, id="empty-token"
        ),
        pytest.param(
            {"hub.mode": "unsubscribe", "hub.verify_token": "test-verify-token", "hub.challenge": "42"},
            id="wrong-mode",
        ),
        pytest.param({"hub.verify_token": "test-verify-token", "hub.challenge": "42"}, id="missing-mode"),
        pytest.param(
            {"hub.mode": "subscribe", "hub.verify_token": "test-verify-token"}, id="missing-challenge"
        ),
        pytest.param(
            {"hub.mode": "subscribe", "hub.verify_token": "test-verify-token", "hub.challenge": ""},
            id="empty-challenge",
        ),
    ],
)
def test_handshake_refused(client: Client, params: dict[str, str]) -> None:
    response = client.get(URL, params)

    assert_error(response, 403, "forbidden")


@pytest.mark.parametrize("candidate", [None, ""])
def test_handshake_with_no_configured_token_never_verifies(
    client: Client, settings, candidate: str | None
) -> None:
    settings.META_WEBHOOK_VERIFY_TOKEN = ""
    params = {"hub.mode": "subscribe", "hub.challenge": "42"}
    if candidate is not None:
        params["hub.verify_token"] = candidate

    assert_error(client.get(URL, params), 403, "forbidden")


# --- POST: signatures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda case: case["name"])
def test_every_vector_signature_is_accepted(client: Client, case: dict[str, Any]) -> None:
    body = case["body"].encode()
    assert sign(body) == case["x_hub_signature_256"]  # the vectors and our reading of them agree

    response = post(client, body, case["x_hub_signature_256"])

    assert response.status_code == 200, response.content
    assert response.json()["status"] in {"accepted", "ignored"}


def test_signature_hex_is_compared_case_insensitively(client: Client) -> None:
    body = CASES["single_string_ids"]["body"].encode()
    signature = sign(body)

    response = post(client, body, "sha256=" + signature.removeprefix("sha256=").upper())

    assert response.status_code == 200
    assert InboxEvent.objects.count() == 1


def _altered_by_one_byte(body: bytes) -> bytes:
    at = body.index(b"444444444444") + 11
    altered = body[:at] + b"5" + body[at + 1 :]
    assert len(altered) == len(body) and sum(a != b for a, b in zip(altered, body, strict=True)) == 1
    return altered


SIGNED_BODY = CASES["single_string_ids"]["body"].encode()
BAD_SIGNATURES = [
    pytest.param(SIGNED_BODY, sign(SIGNED_BODY, "another-secret"), id="wrong-secret"),
    pytest.param(SIGNED_BODY, None, id="missing-header"),
    pytest.param(SIGNED_BODY, "", id="empty-header"),
    pytest.param(SIGNED_BODY, "sha256=", id="empty-digest"),
    pytest.param(
        SIGNED_BODY,
        "sha1=" + hmac.new(APP_SECRET.encode(), SIGNED_BODY, hashlib.sha1).hexdigest(),
        id="sha1-header",
    ),
    pytest.param(SIGNED_BODY, sign(SIGNED_BODY).removeprefix("sha256="), id="no-prefix"),
    pytest.param(SIGNED_BODY, sign(SIGNED_BODY)[:-1], id="truncated-digest"),
    pytest.param(_altered_by_one_byte(SIGNED_BODY), sign(SIGNED_BODY), id="body-altered-one-byte"),
    pytest.param(SIGNED_BODY + b" ", sign(SIGNED_BODY), id="body-trailing-space"),
]


@pytest.mark.parametrize(("body", "signature"), BAD_SIGNATURES)
def test_bad_signature_is_refused_and_nothing_stored(
    client: Client, assert_nothing_stored, body: bytes, signature: str | None
) -> None:
    response = post(client, body, signature)

    assert_error(response, 403, "invalid_signature")
    assert_nothing_stored()


def test_no_app_secret_never_verifies(client: Client, settings, assert_nothing_stored) -> None:
    settings.META_APP_SECRET = ""

    response = post(client, SIGNED_BODY, sign(SIGNED_BODY, ""))

    assert_error(response, 403, "invalid_signature")
    assert_nothing_stored()


def test_incoming_request_id_is_echoed_in_error_and_header(client: Client) -> None:
    response = post(client, SIGNED_BODY, None, HTTP_X_REQUEST_ID="meta-retry-0123456789")

    error = assert_error(response, 403, "invalid_signature")
    assert error["request_id"] == "meta-retry-0123456789"


# --- POST: accepted bodies -------------------------------------------------------------------------------


def test_accepted_event_is_stored_with_its_change_and_one_job(client: Client, jobs_before: int) -> None:
    body = CASES["single_string_ids"]["body"].encode()

    response = post(client, body, CASES["single_string_ids"]["x_hub_signature_256"])

    assert response.status_code == 200
    assert response.json() == {"status": "accepted", "events": 1}
    event = InboxEvent.objects.get()
    assert event.object == "page"
    assert event.payload == json.loads(body)
    assert event.leadgen_ids == ["444444444444"]
    assert event.change_count == 1
    assert event.status == InboxEventStatus.PENDING
    assert event.request_id == response["X-Request-ID"]
    change = InboxChange.objects.get()
    assert change.event_id == event.pk
    assert (change.position, change.leadgen_id, change.page_id, change.form_id) == (
        0,
        "444444444444",
        "153125381133",
        "444444444444",
    )
    assert (change.ad_id, change.adgroup_id) == ("44444444444", "44444444444")
    assert change.submitted_at == datetime.fromtimestamp(1764409990, tz=UTC)
    assert change.value == json.loads(body)["entry"][0]["changes"][0]["value"]
    shard = ingestion.drain_shard(event.pk)
    assert job_rows(jobs_before) == [("leads.drain_inbox", {"shard": shard}, "todo", f"inbox-drain:{shard}")]


def test_numeric_ids_are_stored_as_the_same_text_as_string_ids(client: Client) -> None:
    for name in ("single_string_ids", "single_numeric_ids"):
        case = CASES[name]
        assert post(client, case["body"].encode(), case["x_hub_signature_256"]).status_code == 200

    from_strings, from_numbers = InboxChange.objects.order_by("id")
    assert from_numbers.leadgen_id == "444444444445"
    assert InboxEvent.objects.get(pk=from_numbers.event_id).leadgen_ids == ["444444444445"]
    for name in ("page_id", "form_id", "ad_id", "adgroup_id", "submitted_at"):
        assert getattr(from_numbers, name) == getattr(from_strings, name), name
    assert isinstance(from_numbers.page_id, str) and from_numbers.page_id == "153125381133"


def test_changes_are_stored_in_order_entry_by_entry(client: Client, jobs_before: int) -> None:
    payload = page_payload(
        [leadgen_change("1001"), {"field": "feed", "value": {"item": "status"}}, leadgen_change(1002)],
        [],
        [leadgen_change("1003", page_id="777"), leadgen_change(1004)],
    )

    response = post_signed(client, encode(payload))

    assert response.json() == {"status": "accepted", "events": 4}
    event = InboxEvent.objects.get()
    assert event.leadgen_ids == ["1001", "1002", "1003", "1004"]
    assert event.change_count == 4
    rows = list(
        InboxChange.objects.filter(event=event)
        .order_by("position")
        .values_list("position", "leadgen_id", "page_id")
    )
    assert rows == [
        (0, "1001", "153125381133"),
        (1, "1002", "153125381133"),
        (2, "1003", "777"),
        (3, "1004", "153125381133"),
    ]
    assert [args for _, args, _, _ in job_rows(jobs_before)] == [{"shard": ingestion.drain_shard(event.pk)}]


def test_two_changes_vector_counts_every_leadgen_change(client: Client) -> None:
    case = CASES["two_changes_one_entry"]
    expected = [
        change["value"]["leadgen_id"]
        for entry in json.loads(case["body"])["entry"]
        for change in entry["changes"]
        if change["field"] == "leadgen"
    ]

    response = post(client, case["body"].encode(), case["x_hub_signature_256"])

    assert response.json() == {"status": "accepted", "events": len(expected)}
    assert list(InboxChange.objects.order_by("position").values_list("leadgen_id", flat=True)) == [
        str(leadgen_id) for leadgen_id in expected
    ]


def test_other_object_is_ignored_and_nothing_stored(client: Client, assert_nothing_stored) -> None:
    case = CASES["other_object"]

    response = post(client, case["body"].encode(), case["x_hub_signature_256"])

    assert response.status_code == 200
    assert response.json() == {"status": "ignored"}
    assert_nothing_stored()


def test_other_field_is_accepted_with_no_events_and_nothing_stored(
    client: Client, assert_nothing_stored
) -> None:
    case = CASES["other_field"]

    response = post(client, case["body"].encode(), case["x_hub_signature_256"])

    assert response.status_code == 200
    assert response.json() == {"status": "accepted", "events": 0}
    assert_nothing_stored()


def test_organic_lead_without_ad_id_is_stored(client: Client, jobs_before: int) -> None:
    case = CASES["organic_no_ad_id"]

    response = post(client, case["body"].encode(), case["x_hub_signature_256"])

    assert response.json() == {"status": "accepted", "events": 1}
    change = InboxChange.objects.get()
    assert (change.leadgen_id, change.ad_id, change.adgroup_id) == ("600000000001", "", "")
    assert len(job_rows(jobs_before)) == 1


def test_replayed_post_is_accepted_again(client: Client) -> None:
    case = CASES["single_string_ids"]

    for _ in range(2):
        response = post(client, case["body"].encode(), case["x_hub_signature_256"])
        assert response.status_code == 200
        assert response.json() == {"status": "accepted", "events": 1}


def test_failure_after_the_job_is_deferred_leaves_nothing_behind(
    client: Client, monkeypatch, assert_nothing_stored
) -> None:
    """The event, its changes and its job commit together: a failure after the job insert undoes all."""
    deferred: list[bool] = []
    real_wake = ingestion.inbox_drain_wake

    def defer_then_fail(shard: int) -> bool:
        deferred.append(real_wake(shard))
        raise DatabaseError("injected failure after the job insert")

    monkeypatch.setattr(ingestion, "inbox_drain_wake", defer_then_fail)

    response = post_signed(client, CASES["two_changes_one_entry"]["body"].encode())

    assert deferred == [True]  # the job row really was inserted before the failure
    error = assert_error(response, 503, "unavailable")
    assert error["details"] == {}
    assert int(response["Retry-After"]) > 0
    assert_nothing_stored()


# --- POST: invalid bodies, checked after the signature ---------------------------------------------------

INVALID_BODIES = [
    pytest.param(b'{"object": "page", "entry": [', "body", id="malformed-json"),
    pytest.param(b"", "body", id="empty-body"),
    pytest.param(b"\xff\xfe{}", "body", id="not-utf8"),
    pytest.param(encode([{"object": "page", "entry": []}]), "body", id="json-list"),
    pytest.param(encode("page"), "body", id="json-string"),
    pytest.param(encode({"entry": []}), "object", id="missing-object"),
    pytest.param(encode({"object": 1, "entry": []}), "object", id="object-not-string"),
    pytest.param(encode({"object": "page"}), "entry", id="missing-entry"),
    pytest.param(encode({"object": "page", "entry": {"id": "1"}}), "entry", id="entry-not-list"),
    pytest.param(encode({"object": "page", "entry": ["1"]}), "entry[0]", id="entry-item-not-object"),
    pytest.param(
        encode({"object": "page", "entry": [{"changes": {}}]}), "entry[0].changes", id="changes-not-list"
    ),
    pytest.param(encode(page_payload(["leadgen"])), "entry[0].changes[0]", id="change-not-object"),
    pytest.param(
        encode(page_payload([{"field": "leadgen", "value": "123"}])),
        "entry[0].changes[0].value",
        id="change-value-not-object",
    ),
    pytest.param(
        encode(page_payload([{"field": "leadgen", "value": {"ad_id": "1"}}])),
        "entry[0].changes[0].value.leadgen_id",
        id="leadgen-without-id",
    ),
    pytest.param(
        encode(page_payload([leadgen_change("")])),
        "entry[0].changes[0].value.leadgen_id",
        id="leadgen-id-empty",
    ),
    pytest.param(
        encode(page_payload([leadgen_change(True)])),
        "entry[0].changes[0].value.leadgen_id",
        id="leadgen-id-bool",
    ),
    pytest.param(
        encode(page_payload([leadgen_change(4.5)])),
        "entry[0].changes[0].value.leadgen_id",
        id="leadgen-id-float",
    ),
    pytest.param(
        encode(page_payload([leadgen_change({"id": "1"})])),
        "entry[0].changes[0].value.leadgen_id",
        id="leadgen-id-object",
    ),
    pytest.param(
        encode(page_payload([leadgen_change(["1"])])),
        "entry[0].changes[0].value.leadgen_id",
        id="leadgen-id-list",
    ),
    pytest.param(
        encode(page_payload([leadgen_change("9" * 65)])),
        "entry[0].changes[0].value.leadgen_id",
        id="leadgen-id-too-long",
    ),
    pytest.param(
        encode(page_payload([leadgen_change("1", ad_id=False)])),
        "entry[0].changes[0].value.ad_id",
        id="ad-id-bool",
    ),
    pytest.param(
        encode(page_payload([leadgen_change("1")], [leadgen_change(None)])),
        "entry[1].changes[0].value.leadgen_id",
        id="second-entry-invalid",
    ),
    # PostgreSQL cannot store U+0000: a 503 would make Meta retry a body that can never be stored.
    pytest.param(encode(page_payload([leadgen_change("12\u000034")])), "body", id="nul-in-leadgen-id"),
    pytest.param(encode(page_payload([leadgen_change("12", note="a\u0000b")])), "body", id="nul-in-value"),
    pytest.param(encode(page_payload([leadgen_change("12", **{"k\u0000": 1})])), "body", id="nul-in-key"),
    pytest.param(
        encode(page_payload([{"field": "feed", "value": {"m": "\u0000"}}, leadgen_change("12")])),
        "body",
        id="nul-beside-a-leadgen-change",
    ),
]


@pytest.mark.parametrize(("body", "detail_key"), INVALID_BODIES)
def test_invalid_signed_body_is_400_with_details(
    client: Client, assert_nothing_stored, body: bytes, detail_key: str
) -> None:
    response = post_signed(client, body)

    error = assert_error(response, 400, "invalid_input")
    assert detail_key in error["details"], error
    assert_nothing_stored()


@pytest.mark.parametrize("signed_with", [None, "not-the-app-secret"], ids=["no-header", "wrong-secret"])
@pytest.mark.parametrize(("body", "detail_key"), INVALID_BODIES)
def test_invalid_unsigned_body_is_403_not_400(
    client: Client, assert_nothing_stored, body: bytes, detail_key: str, signed_with: str | None
) -> None:
    response = post(client, body, None if signed_with is None else sign(body, signed_with))

    assert_error(response, 403, "invalid_signature")
    assert_nothing_stored()


def test_nul_in_a_body_without_leadgen_changes_is_accepted_and_nothing_stored(
    client: Client, assert_nothing_stored
) -> None:
    body = encode(page_payload([{"field": "feed", "value": {"message": "a\u0000b"}}]))
    assert b"\\u0000" in body

    response = post_signed(client, body)

    assert response.json() == {"status": "accepted", "events": 0}
    assert_nothing_stored()


# --- POST: limits ----------------------------------------------------------------------------------------


def _batch(changes: int) -> bytes:
    """`changes` leadgen changes spread over entries of at most 100, as Meta batches them."""
    entries = [
        [leadgen_change(str(10_000_000 + index)) for index in range(start, min(start + 100, changes))]
        for start in range(0, changes, 100)
    ]
    return encode(page_payload(*entries))


def test_batch_of_1000_changes_is_accepted_in_one_event_and_one_job(client: Client, jobs_before: int) -> None:
    response = post_signed(client, _batch(1000))

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "accepted", "events": 1000}
    event = InboxEvent.objects.get()
    assert event.change_count == 1000
    leadgen_ids = list(
        InboxChange.objects.filter(event=event).order_by("position").values_list("leadgen_id", flat=True)
    )
    assert leadgen_ids == [str(10_000_000 + index) for index in range(1000)]
    assert event.leadgen_ids == leadgen_ids
    assert [args for _, args, _, _ in job_rows(jobs_before)] == [{"shard": ingestion.drain_shard(event.pk)}]


def test_batch_of_1001_changes_is_refused(client: Client, assert_nothing_stored) -> None:
    response = post_signed(client, _batch(1001))

    error = assert_error(response, 400, "invalid_input")
    assert "1000" in error["message"]
    assert_nothing_stored()


def test_body_at_the_limit_is_accepted_and_one_byte_over_is_413(
    client: Client, settings, assert_nothing_stored
) -> None:
    body = CASES["compact_whitespace"]["body"].encode()
    settings.META_WEBHOOK_MAX_BODY_BYTES = len(body) - 1

    error = assert_error(post_signed(client, body), 413, "invalid_input")
    assert error["details"] == {"max_bytes": len(body) - 1}
    assert_nothing_stored()

    settings.META_WEBHOOK_MAX_BODY_BYTES = len(body)
    assert post_signed(client, body).json() == {"status": "accepted", "events": 1}


def test_oversized_unsigned_body_is_413_and_nothing_stored(
    client: Client, settings, assert_nothing_stored
) -> None:
    settings.META_WEBHOOK_MAX_BODY_BYTES = 64

    response = post(client, b"{" + b" " * 200 + b"}", None)

    assert_error(response, 413, "invalid_input")
    assert_nothing_stored()


@pytest.mark.parametrize("method", ["put", "delete", "patch"])
def test_other_methods_are_405(client: Client, method: str) -> None:
    response = getattr(client, method)(URL, data=SIGNED_BODY, content_type="application/json")

    assert_error(response, 405, "method_not_allowed")
    assert response["Allow"] == "GET, POST"


# --- Database unreachable: 503 inside Meta's budget ------------------------------------------------------

UNAVAILABLE_BUDGET_S = 5.0


@dataclass
class BlackHole:
    port: int
    held: list[socket.socket] = field(default_factory=list)


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    """A local TCP server that accepts connections and never answers a byte."""
    server = socket.create_server(("127.0.0.1", 0), backlog=16)
    server.settimeout(0.1)
    hole = BlackHole(port=server.getsockname()[1])
    held = hole.held
    stop = threading.Event()

    def accept_forever() -> None:
        while not stop.is_set():
            try:
                peer, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(peer)

    acceptor = threading.Thread(target=accept_forever, name="black-hole", daemon=True)
    acceptor.start()
    try:
        yield hole
    finally:
        stop.set()
        acceptor.join(timeout=2)
        for peer in held:
            peer.close()
        server.close()


@pytest.fixture
def refused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def default_database_at(host: str, port: int) -> Iterator[None]:
    """Point the default connection elsewhere; always put the test database back."""
    default = connections["default"]
    saved = default.settings_dict["HOST"], default.settings_dict["PORT"]
    default.close()
    default.settings_dict["HOST"], default.settings_dict["PORT"] = host, str(port)
    try:
        yield
    finally:
        default.close()
        default.settings_dict["HOST"], default.settings_dict["PORT"] = saved
        default.ensure_connection()


def _assert_unavailable_in_budget(client: Client, host: str, port: int) -> float:
    body = CASES["single_string_ids"]["body"].encode()
    with default_database_at(host, port):
        started = time.monotonic()
        response = post(client, body, CASES["single_string_ids"]["x_hub_signature_256"])
        elapsed = time.monotonic() - started

    error = assert_error(response, 503, "unavailable")
    assert int(response["Retry-After"]) > 0
    assert "127.0.0.1" not in error["message"] and str(port) not in error["message"]
    assert elapsed < UNAVAILABLE_BUDGET_S
    # The test database is back on the same connection object.
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        assert cursor.fetchone()[0] == connection.settings_dict["NAME"]
    return elapsed


@pytest.mark.django_db(transaction=True)
def test_database_black_hole_answers_503_within_budget(
    client: Client, black_hole: BlackHole, settings
) -> None:
    # The real psycopg connect path with the configured connect timeout (DB_CONNECT_TIMEOUT_S).
    assert connection.settings_dict["OPTIONS"]["connect_timeout"] == settings.DB_CONNECT_TIMEOUT_S

    _assert_unavailable_in_budget(client, "127.0.0.1", black_hole.port)

    assert black_hole.held, "the request never reached the black hole"

    assert InboxEvent.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_database_refusing_connections_answers_503_fast(client: Client, refused_port: int) -> None:
    elapsed = _assert_unavailable_in_budget(client, "127.0.0.1", refused_port)

    assert elapsed < 2.0
    assert InboxEvent.objects.count() == 0
