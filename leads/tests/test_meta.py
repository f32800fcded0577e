"""Meta's protocol side of ingestion: reading a Graph lead's `field_data`, and the Graph lead fetch
against a real local HTTP server (error classification, timeouts, the access token's secrecy)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from leads import meta

VECTORS = json.loads((Path(__file__).parent / "data" / "meta_webhooks.json").read_text())
TOKEN = "page-token-SECRET-7f3a9c"
LEADGEN_ID = "555000111222"


def field(name: str, *values: Any) -> dict[str, Any]:
    return {"name": name, "values": list(values)}


# --- extract_lead_fields ------------------------------------------------------------------------------------


def test_extract_reads_the_graph_vector():
    fields = meta.extract_lead_fields(VECTORS["graph_lead_response_example"])

    assert fields == meta.LeadFields(
        phone="+54 9 11 5555-0101",
        email="mjperez@example.com",
        first_name="",
        last_name="",
        full_name="María José Pérez",
        purpose="Inversión",
        sensitive_fields_dropped=(),
    )


def test_extract_matches_names_case_insensitively_and_by_meaning():
    fields = meta.extract_lead_fields(
        {
            "field_data": [
                field("  Full_Name ", "Ana Gómez"),
                field("E-MAIL", "ana@example.com"),
                field("Teléfono_Celular", "11 5555 0102"),
                field("¿CUÁL ES EL PROPÓSITO?", "Vivienda"),
                field("favourite_colour", "green"),
            ]
        }
    )

    assert (fields.full_name, fields.email, fields.phone, fields.purpose) == (
        "Ana Gómez",
        "ana@example.com",
        "11 5555 0102",
        "Vivienda",
    )


def test_extract_builds_the_full_name_from_first_and_last():
    fields = meta.extract_lead_fields(
        {"field_data": [field("FIRST_NAME", "Ana"), field("last_name", "Gómez"), field("phone_number", "1")]}
    )
    assert (fields.first_name, fields.last_name, fields.full_name) == ("Ana", "Gómez", "Ana Gómez")

    only_first = meta.extract_lead_fields({"field_data": [field("first_name", "Ana")]})
    assert only_first.full_name == "Ana"


def test_extract_prefers_an_explicit_full_name_over_first_and_last():
    fields = meta.extract_lead_fields(
        {
            "field_data": [
                field("first_name", "Ana"),
                field("last_name", "G."),
                field("full_name", "Ana Gómez"),
            ]
        }
    )
    assert fields.full_name == "Ana Gómez"


def test_extract_drops_the_dni_and_redaction_removes_it_from_what_is_stored():
    graph_lead = {
        "id": LEADGEN_ID,
        "field_data": [
            field("full_name", "Ana Gómez"),
            field("DNI", "30123456"),
            field("número_de_dni", "30.123.456"),
            field("phone_number", "+5491155550102"),
        ],
    }

    fields = meta.extract_lead_fields(graph_lead)
    stored = meta.graph_lead_redacted(graph_lead, fields)

    assert set(fields.sensitive_fields_dropped) == {"dni", "número_de_dni"}
    assert "30123456" not in json.dumps(fields.__dict__)
    assert [item["name"] for item in stored["field_data"]] == ["full_name", "phone_number"]
    assert "30123456" not in json.dumps(stored) and "30.123.456" not in json.dumps(stored)
    # The Graph object itself is left as it was (the caller may still need it).
    assert len(graph_lead["field_data"]) == 4
    assert stored["id"] == LEADGEN_ID


def test_redaction_removes_a_dni_whose_first_value_is_empty():
    # Extraction reads only the first value; the DNI in the second one must not be stored either.
    graph_lead = {"field_data": [field("dni", "", "30123456"), field("phone_number", "+5491155550102")]}

    stored = meta.graph_lead_redacted(graph_lead, meta.extract_lead_fields(graph_lead))

    assert "30123456" not in json.dumps(stored)
    assert [item["name"] for item in stored["field_data"]] == ["phone_number"]


def test_redaction_without_sensitive_fields_keeps_the_lead():
    graph_lead = VECTORS["graph_lead_response_example"]
    assert meta.graph_lead_redacted(graph_lead, meta.extract_lead_fields(graph_lead)) == graph_lead


def test_extract_skips_empty_values_and_takes_a_later_non_empty_one():
    fields = meta.extract_lead_fields(
        {
            "field_data": [
                field("email"),
                {"name": "full_name"},
                {"name": "first_name", "values": None},
                field("phone_number", "   "),
                field("work_phone_number", "+5491155550103"),
                field("last_name", ""),
                field("", "orphan value"),
            ]
        }
    )

    assert fields == meta.LeadFields(phone="+5491155550103")


def test_extract_ignores_items_that_are_not_objects():
    fields = meta.extract_lead_fields(
        {
            "field_data": [
                "phone_number",
                None,
                42,
                ["email", "x@example.com"],
                field("email", "a@example.com"),
            ]
        }
    )
    assert fields == meta.LeadFields(email="a@example.com")


@pytest.mark.parametrize("field_data", [None, "phone_number", {"name": "phone_number"}, []])
def test_extract_without_a_field_list_finds_nothing(field_data):
    assert meta.extract_lead_fields({"field_data": field_data}) == meta.LeadFields()
    assert meta.extract_lead_fields({}) == meta.LeadFields()


def test_extract_reads_non_string_values_as_text():
    fields = meta.extract_lead_fields({"field_data": [field("phone_number", 5491155550104)]})
    assert fields.phone == "5491155550104"


# --- graph_lead_fetch ---------------------------------------------------------------------------------------


@pytest.fixture
def graph(settings, httpserver: HTTPServer) -> Iterator[httpx.Client]:
    settings.META_GRAPH_URL = httpserver.url_for("")
    settings.META_PAGE_ACCESS_TOKEN = TOKEN
    settings.META_GRAPH_TIMEOUT_S = 2.0
    with meta.graph_client() as client:
        yield client


def graph_error(client: httpx.Client) -> meta.GraphError:
    with pytest.raises(meta.GraphError) as caught:
        meta.graph_lead_fetch(client, LEADGEN_ID)
    assert TOKEN not in str(caught.value)
    return caught.value


def test_fetch_returns_the_lead_and_sends_the_token_as_a_query_parameter(graph, httpserver):
    lead = VECTORS["graph_lead_response_example"]
    httpserver.expect_request(f"/{LEADGEN_ID}", method="GET").respond_with_json(lead)

    assert meta.graph_lead_fetch(graph, LEADGEN_ID) == lead

    (request, _response) = httpserver.log[0]
    assert request.args.to_dict() == {"access_token": TOKEN}
    assert "access_token" not in {name.lower() for name in request.headers.keys()}
    assert TOKEN not in request.headers.get("Authorization", "")


def test_fetch_with_an_explicit_token_uses_it(graph, httpserver):
    httpserver.expect_request(f"/{LEADGEN_ID}", query_string={"access_token": "other"}).respond_with_json(
        {"id": LEADGEN_ID}
    )
    assert meta.graph_lead_fetch(graph, LEADGEN_ID, access_token="other") == {"id": LEADGEN_ID}


def test_fetch_without_a_token_is_a_configuration_error_and_sends_nothing(graph, httpserver, settings):
    """Not transient: retries cannot succeed until staff set the token (then they requeue)."""
    settings.META_PAGE_ACCESS_TOKEN = ""

    error = graph_error(graph)

    assert isinstance(error, meta.GraphTokenError)
    assert (error.transient, error.status) == (False, None)
    assert str(error) == "META_PAGE_ACCESS_TOKEN is not configured: set it and requeue."
    assert httpserver.log == []
    assert not meta.page_access_token_configured()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(
            400,
            {"error": {"message": "Error validating access token", "type": "OAuthException", "code": 190}},
            "META_PAGE_ACCESS_TOKEN was rejected (Graph API answered 400 (code 190): Error validating"
            " access token): replace it and requeue.",
            id="invalid_case",
        ),
        pytest.param(
            401,
            {"error": {"message": "Invalid OAuth access token.", "code": 190, "error_subcode": 463}},
            "META_PAGE_ACCESS_TOKEN was rejected (Graph API answered 401 (code 190): Invalid OAuth"
            " access token): replace it and requeue.",
            id="expired_case",
        ),
        pytest.param(
            400,
            {"error": {"type": "OAuthException", "code": 102}},
            "META_PAGE_ACCESS_TOKEN was rejected (Graph API answered 400 (code 102)):"
            " replace it and requeue.",
            id="session_case",
        ),
    ],
)
def test_a_token_graph_rejects_is_a_configuration_error(graph, httpserver, status, body, expected):
    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_json(body, status=status)

    error = graph_error(graph)

    assert isinstance(error, meta.GraphTokenError)
    assert (error.transient, error.status, str(error)) == (False, status, expected)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(graph, httpserver, status):
    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_json(
        {"error": {"message": "An unexpected error has occurred.", "code": 2}}, status=status
    )

    error = graph_error(graph)

    assert (error.transient, error.status) == (True, status)
    assert f"Graph API answered {status}" in str(error)


def test_an_html_gateway_error_is_transient(graph, httpserver):
    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_data(
        "<html>502 Bad Gateway</html>", status=502, content_type="text/html"
    )

    error = graph_error(graph)

    assert (error.transient, error.status) == (True, 502)


def test_http_429_is_transient(graph, httpserver):
    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_data("slow down", status=429)
    assert graph_error(graph).transient is True


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80001, 80004])
def test_meta_rate_limit_codes_are_transient(graph, httpserver, code):
    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_json(
        {"error": {"message": f"(#{code}) Too many calls", "type": "OAuthException", "code": code}},
        status=400,
    )

    error = graph_error(graph)

    assert (error.transient, error.status) == (True, 400)
    assert f"(code {code})" in str(error)


def test_an_error_meta_marks_transient_is_transient(graph, httpserver):
    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_json(
        {"error": {"message": "Please retry", "code": 1, "is_transient": True}}, status=400
    )
    assert graph_error(graph).transient is True


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            {"error": {"message": "Unsupported get request.", "type": "GraphMethodException", "code": 100}},
            "Graph API answered 400 (code 100): Unsupported get request.",
        ),
        (
            403,
            {"error": {"message": "(#200) Requires pages_manage_ads permission", "code": 200}},
            "Graph API answered 403 (code 200): (#200) Requires pages_manage_ads permission",
        ),
        (404, {"error": {"message": "Not found"}}, "Graph API answered 404: Not found"),
        (400, {"error": {"message": "Odd", "code": [190]}}, "Graph API answered 400: Odd"),
        (403, {"unexpected": True}, "Graph API answered 403"),
    ],
)
def test_client_errors_are_permanent(graph, httpserver, status, body, expected):
    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_json(body, status=status)

    error = graph_error(graph)

    assert (error.transient, error.status, str(error)) == (False, status, expected)
    assert not isinstance(error, meta.GraphTokenError)


def test_a_long_meta_message_is_cut(graph, httpserver):
    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_json(
        {"error": {"message": "x" * 5000, "code": 100}}, status=400
    )
    assert len(str(graph_error(graph))) < 300


@pytest.mark.parametrize(
    ("status", "transient"),
    [(200, False), (400, False), (500, True)],
    ids=["ok-not-json", "client-error-not-json", "server-error-not-json"],
)
def test_a_body_that_is_not_json_is_an_error(graph, httpserver, status, transient):
    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_data(
        "<html>not json</html>", status=status, content_type="text/html"
    )

    error = graph_error(graph)

    assert (error.transient, error.status) == (transient, status)


def test_a_json_body_that_is_not_an_object_is_an_error(graph, httpserver):
    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_json(["not", "an", "object"])
    error = graph_error(graph)
    assert (error.transient, error.status) == (False, 200)


def test_a_slow_graph_times_out_as_transient(settings, httpserver):
    settings.META_GRAPH_URL = httpserver.url_for("")
    settings.META_PAGE_ACCESS_TOKEN = TOKEN
    settings.META_GRAPH_TIMEOUT_S = 0.2

    def slow(request: Request) -> Response:
        time.sleep(0.8)
        return Response(json.dumps({"id": LEADGEN_ID}), content_type="application/json")

    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_handler(slow)

    with meta.graph_client() as client:
        error = graph_error(client)

    # Our own error, not the stub's late answer.
    assert error.transient is True
    assert str(error) == "Graph API timed out."


def test_an_unreachable_graph_is_transient(settings):
    # A port that was free a moment ago: nothing listens there, so the connection is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.META_GRAPH_URL = f"http://127.0.0.1:{port}/v21.0"
    settings.META_PAGE_ACCESS_TOKEN = TOKEN

    with meta.graph_client() as client:
        error = graph_error(client)

    assert error.transient is True
    assert str(error) == "Graph API unreachable (ConnectError)."
    assert error.__cause__ is None and error.__suppress_context__


# --- The access token stays out of logs and error texts -----------------------------------------------------


@pytest.fixture
def every_log_record(caplog) -> Iterator[pytest.LogCaptureFixture]:
    """Capture every logger at DEBUG, including the HTTP client's own (httpx logs request URLs)."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "leads", "converzia"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything our code logged: the records of the test's own thread, where the Graph client runs.
    The stub server stands in for Meta's side and naturally logs the URL it received (its access log,
    or a broken pipe when our client gave up on a slow answer), from its own threads, at whatever moment
    the machine's load lets it; those records are left out."""
    return "\n".join(
        f"{record.name} {record.getMessage()} {record.__dict__!r}"
        for record in caplog.records
        if not record.name.startswith("werkzeug") and record.thread == threading.get_ident()
    )


def test_the_token_never_reaches_the_logs_on_success(graph, httpserver, every_log_record):
    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_json({"id": LEADGEN_ID, "field_data": []})

    meta.graph_lead_fetch(graph, LEADGEN_ID)

    # httpx did log the request URL (that is the leak this guards against), with the token masked.
    request_lines = [r.getMessage() for r in every_log_record.records if r.name == "httpx"]
    assert any(f"/{LEADGEN_ID}?access_token=[redacted]" in line for line in request_lines), request_lines
    assert TOKEN not in logged_text(every_log_record)


@pytest.mark.parametrize(("status", "code"), [(400, 100), (500, 100), (400, 190)])
def test_the_token_never_reaches_logs_or_errors_even_when_graph_echoes_it(
    graph, httpserver, every_log_record, status, code
):
    def echo(request: Request) -> Response:
        # Some upstreams quote the request back; the token must still not come out of our side.
        message = f"Bad request to {request.full_path} with token {request.args['access_token']}"
        return Response(json.dumps({"error": {"message": message, "code": code}}), status=status)

    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_handler(echo)

    error = graph_error(graph)

    assert "Bad request to" in str(error)
    assert TOKEN not in logged_text(every_log_record)


def test_the_token_never_reaches_logs_or_errors_on_transport_failures(settings, httpserver, every_log_record):
    settings.META_GRAPH_URL = httpserver.url_for("")
    settings.META_PAGE_ACCESS_TOKEN = TOKEN
    settings.META_GRAPH_TIMEOUT_S = 0.2

    def slow(request: Request) -> Response:
        time.sleep(0.5)
        return Response("{}")

    httpserver.expect_request(f"/{LEADGEN_ID}").respond_with_handler(slow)

    with meta.graph_client() as client:
        error = graph_error(client)

    assert error.transient
    # httpx's own exception (its text may carry the URL) is not chained into tracebacks.
    assert error.__suppress_context__ and error.__cause__ is None
    assert TOKEN not in logged_text(every_log_record)
