"""OpenTelemetry tracing (decision D11): off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

Spans go over OTLP/HTTP (protobuf) to `<endpoint>/v1/traces`, with resource `service.name=converzia`
(plus `service.version` = RELEASE_VERSION and `deployment.environment`). Instrumented: Django (one
server span per request, with `converzia.request_id` and `converzia.tenant_id` attributes set by
converzia.observability.trace_tags) and psycopg (one client span per SQL statement; statements only,
never their parameters). The worker wraps each job in a span (`job_middlewares`), so a job's queries
are children of it; SQL with no parent span (the worker polling its queue) is not exported.

The packages are an optional extra: `pip install -r requirements-otel.txt`. With the variable set and
the packages missing, `init_otel` logs one warning and the process runs without tracing.

Where it starts: `converzia/wsgi.py` (web, before Django builds its middleware chain; `runserver` and
`make run` load it too) and the `run_worker` command. gunicorn without `--preload` (how `make run`
starts it) imports the WSGI module in each worker after forking, so each worker sets up its own
exporter. With `--preload` the master sets it up before forking; the SDK's batch span processor
registers an at-fork hook that restarts its export thread in every worker, and database connections
are opened by each worker after the fork, so nothing else is needed. (A gunicorn `post_fork` hook
would be too late: the preloaded handler has already built its middleware without the tracing one.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("converzia.otel")

SERVICE_NAME = "converzia"
TRACES_PATH = "/v1/traces"
# Span attributes that carry the URL, and so the query string: masked like Sentry's.
_URL_ATTRIBUTES = ("http.url", "http.target", "url.full", "url.query")

# The process that set tracing up (a forked child of it inherits a working provider).
_initialised_pid: int | None = None
_trace_api: Any = None
_provider: Any = None


def traces_endpoint(endpoint: str) -> str:
    """OTLP/HTTP convention: the base endpoint plus /v1/traces (unless it already names the path)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def is_enabled() -> bool:
    return _initialised_pid is not None


def current_span() -> Any:
    """The current OpenTelemetry span while tracing is on; None otherwise (no import, no cost)."""
    if _trace_api is None:
        return None
    span = _trace_api.get_current_span()
    return span if span.is_recording() else None


def init_otel(role: str, *, endpoint: str | None = None) -> bool:
    """Set up tracing for this process (`role`: web or worker). True when tracing is on.

    Reads `OTEL_EXPORTER_OTLP_ENDPOINT` from settings unless `endpoint` is given. Safe to call twice.
    """
    global _initialised_pid, _trace_api, _provider
    from django.conf import settings

    endpoint = settings.OTEL_EXPORTER_OTLP_ENDPOINT if endpoint is None else endpoint
    if not endpoint:
        return False
    if _initialised_pid is not None:
        return True
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.django import DjangoInstrumentor
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased
    except ImportError as exc:
        logger.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed (missing %s); "
            "tracing is off. Install it with `pip install -r requirements-otel.txt`.",
            exc.name,
        )
        return False

    resource = Resource.create(
        {
            "service.name": SERVICE_NAME,
            "service.version": getattr(settings, "RELEASE_VERSION", "dev"),
            "deployment.environment": _environment(),
            "converzia.role": role,
        }
    )
    provider = TracerProvider(resource=resource, sampler=ParentBased(root=_root_sampler()))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_endpoint(endpoint))))
    trace.set_tracer_provider(provider)
    if role == "web":
        DjangoInstrumentor().instrument(tracer_provider=provider, request_hook=_mask_url_attributes)
    PsycopgInstrumentor().instrument(tracer_provider=provider, capture_parameters=False)
    _trace_api, _provider = trace, provider
    _initialised_pid = os.getpid()
    logger.info("OpenTelemetry tracing on (%s): spans go to %s", role, traces_endpoint(endpoint))
    return True


def force_flush(timeout_ms: int = 5_000) -> None:
    """Export what is buffered now (the SDK also does it at exit)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def shutdown() -> None:
    """Flush, stop exporting and remove the instrumentation (tests; a process that turns tracing off).
    OpenTelemetry lets a process set its tracer provider only once, so tracing cannot start again."""
    global _initialised_pid, _trace_api, _provider
    if _provider is None:
        return
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    for instrumentor in (DjangoInstrumentor(), PsycopgInstrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    _provider.force_flush()
    _provider.shutdown()
    _initialised_pid = _trace_api = _provider = None


def job_middlewares() -> list[Callable[..., Any]]:
    """procrastinate task middlewares wrapping each job in a span (empty when tracing is off)."""
    if _provider is None:
        return []
    tracer = _provider.get_tracer("converzia.worker")
    kind = _trace_api.SpanKind.CONSUMER

    def span_name(context: Any) -> str:
        return f"job {context.job.task_name}"

    def sync_job_span(call_next: Callable[[], Any], context: Any, worker: Any) -> Any:
        with tracer.start_as_current_span(span_name(context), kind=kind) as span:
            span.set_attribute("converzia.job_id", context.job.id or 0)
            return call_next()

    async def async_job_span(call_next: Callable[[], Awaitable[Any]], context: Any, worker: Any) -> Any:
        with tracer.start_as_current_span(span_name(context), kind=kind) as span:
            span.set_attribute("converzia.job_id", context.job.id or 0)
            return await call_next()

    return [sync_job_span, async_job_span]


def _environment() -> str:
    from django.conf import settings

    configured = getattr(settings, "SENTRY_ENVIRONMENT", "")
    return configured or os.environ.get("DJANGO_SETTINGS_MODULE", "").rsplit(".", 1)[-1] or "production"


def _root_sampler() -> Any:
    """Every trace that starts at a request or a job; never one that starts at a bare SQL statement
    (the worker's queue polling would otherwise be a trace every second)."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind

    class NoOrphanClientSpans(Sampler):
        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> Any:
            if kind == SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return ALWAYS_ON.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return "NoOrphanClientSpans"

    return NoOrphanClientSpans()


def _mask_url_attributes(span: Any, request: Any) -> None:
    """Query strings can carry search terms (an e-mail, a name): filtered and masked per parameter, by
    the same rules as Sentry's (converzia.observability.sentry.scrub_query_string)."""
    from converzia.observability.sentry import scrub_query_string

    attributes = getattr(span, "attributes", None) or {}
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if not isinstance(value, str):
            continue
        if key == "url.query":
            masked = scrub_query_string(value)
        elif "?" in value:
            base, _, query = value.partition("?")
            masked = f"{base}?{scrub_query_string(query)}"
        else:
            continue
        if masked != value:
            span.set_attribute(key, masked)
