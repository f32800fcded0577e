"""OpenTelemetry (decision D11) against a real local HTTP server standing in for an OTLP collector.

The tests that export need the optional extra (`pip install -r requirements-otel.txt`; CI installs
it) and are skipped with that reason without it. The server receives OTLP/HTTP protobuf POSTs at
/v1/traces; the tests decode them with the extra's own protobuf classes.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from werkzeug import Request as WerkzeugRequest
from werkzeug import Response as WerkzeugResponse
from werkzeug.test import Client as WsgiClient

from conftest import issue_token
from converzia.models import TenantRole
from converzia.observability import otel
from converzia.observability.trace_tags import REQUEST_ID_ATTRIBUTE, TENANT_ID_ATTRIBUTE, install
from converzia.tests.factories import TenantMemberFactory

OTEL_INSTALLED = importlib.util.find_spec("opentelemetry.sdk") is not None and (
    importlib.util.find_spec("opentelemetry.instrumentation.django") is not None
)
needs_extra = pytest.mark.skipif(
    not OTEL_INSTALLED,
    reason="OpenTelemetry extra not installed: pip install -r requirements-otel.txt",
)

SERVER, CLIENT, CONSUMER = 2, 3, 5  # opentelemetry.proto.trace.v1.Span.SpanKind


class Collector:
    """An OTLP/HTTP receiver: keeps every ExportTraceServiceRequest posted to /v1/traces."""

    def __init__(self, httpserver: Any) -> None:
        self.requests: list[Any] = []
        self.content_types: list[str] = []
        self.endpoint = f"http://{httpserver.host}:{httpserver.port}"
        httpserver.expect_request("/v1/traces", method="POST").respond_with_handler(self.handle)

    def handle(self, request: WerkzeugRequest) -> WerkzeugResponse:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = request.get_data()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.content_types.append(request.headers.get("Content-Type", ""))
        self.requests.append(ExportTraceServiceRequest.FromString(body))
        return WerkzeugResponse(b"", status=200, content_type="application/x-protobuf")

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        found = []
        for export in self.requests:
            for resource_spans in export.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope_spans.spans)
        return found


def attributes(key_values: Any) -> dict[str, Any]:
    decoded = {}
    for kv in key_values:
        field = kv.value.WhichOneof("value")
        decoded[kv.key] = getattr(kv.value, field) if field else None
    return decoded


@pytest.fixture
def collector(httpserver: Any) -> Collector:
    return Collector(httpserver)


@pytest.fixture
def tracing(collector: Collector, settings: Any) -> Iterator[Collector]:
    """Tracing on for one test (web role), then instrumentation removed and the provider shut down."""
    settings.MIDDLEWARE = install(list(settings.MIDDLEWARE))
    assert otel.init_otel("web", endpoint=collector.endpoint)
    # Connections opened before instrumenting are not traced: start a fresh one.
    connection.close()
    try:
        yield collector
    finally:
        otel.shutdown()
        connection.close()


@needs_extra
@pytest.mark.django_db(transaction=True)
def test_a_request_exports_a_server_span_with_db_spans_and_the_request_id(tracing: Collector) -> None:
    membership = TenantMemberFactory(role=TenantRole.OWNER)
    headers = {
        "Authorization": f"Bearer {issue_token(membership.user)}",
        "X-Tenant-ID": str(membership.tenant.pk),
    }

    response = WsgiClient(WSGIHandler()).get("/api/portal/leads?q=juana%40example.org", headers=headers)
    otel.force_flush()

    assert response.status_code == 200
    assert tracing.content_types and all(t == "application/x-protobuf" for t in tracing.content_types)
    spans = tracing.spans()
    [(resource, server)] = [(r, s) for r, s in spans if s.kind == SERVER]
    assert resource["service.name"] == "converzia"
    server_attributes = attributes(server.attributes)
    assert server_attributes[REQUEST_ID_ATTRIBUTE] == response.headers["X-Request-ID"]
    assert server_attributes[TENANT_ID_ATTRIBUTE] == str(membership.tenant.pk)
    # The query string is filtered like Sentry's: `q` is free text.
    assert server_attributes["http.target"] == "/api/portal/leads?q=[Filtered]"
    assert not any("juana%40example.org" in str(v) or "juana@" in str(v) for v in server_attributes.values())
    db_spans = [s for _, s in spans if s.kind == CLIENT and s.trace_id == server.trace_id]
    assert db_spans, "no DB span in the request's trace"
    for span in db_spans:
        db = attributes(span.attributes)
        assert db.get("db.system") == "postgresql" or db.get("db.system.name") == "postgresql"
    # Statements, never their parameters.
    assert not any(
        key.startswith("db.statement.parameters") for s in db_spans for key in attributes(s.attributes)
    )


@needs_extra
@pytest.mark.django_db(transaction=True)
def test_a_job_is_a_span_with_its_queries_and_bare_queries_are_not_exported(tracing: Collector) -> None:
    from django.contrib.auth import get_user_model

    sync_job_span, _ = otel.job_middlewares()

    class FakeJob:
        id = 42
        task_name = "test.job"

    class FakeContext:
        job = FakeJob()

    get_user_model().objects.count()  # a query outside any request or job: no trace of its own
    sync_job_span(lambda: get_user_model().objects.count(), FakeContext(), None)
    otel.force_flush()

    spans = [s for _, s in tracing.spans()]
    [job] = [s for s in spans if s.kind == CONSUMER]
    assert job.name == "job test.job"
    children = [s for s in spans if s.kind == CLIENT]
    assert children and all(s.trace_id == job.trace_id for s in children)


def test_off_when_the_endpoint_is_unset(settings: Any) -> None:
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = ""
    assert otel.init_otel("web") is False
    assert not otel.is_enabled()
    assert otel.current_span() is None
    assert otel.job_middlewares() == []


def test_missing_packages_log_one_warning_and_the_process_goes_on(
    settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = "http://127.0.0.1:4318"
    # As if the extra were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with caplog.at_level(logging.WARNING, logger="converzia.otel"):
        assert otel.init_otel("web") is False
    warnings = [r for r in caplog.records if r.name == "converzia.otel"]
    assert len(warnings) == 1
    assert "requirements-otel.txt" in warnings[0].getMessage()
    assert not otel.is_enabled()


def test_traces_endpoint_follows_the_otlp_http_convention() -> None:
    assert otel.traces_endpoint("http://collector:4318") == "http://collector:4318/v1/traces"
    assert otel.traces_endpoint("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert otel.traces_endpoint("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"
