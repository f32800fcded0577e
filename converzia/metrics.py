"""Prometheus metrics: every metric is declared here, once, so names and labels stay consistent.

Each is incremented where its event happens. `GET /metrics` (converzia/observability/) exposes them,
summed over processes when PROMETHEUS_MULTIPROC_DIR is set, plus gauges read from the database at
scrape time (queue depth, stats view age: converzia/observability/exposition.py). Labels take bounded
values only (outcomes, URL patterns, query names), never ids or raw paths. The full list, with labels,
is in docs/observability.md.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

WEBHOOK_REQUESTS = Counter(
    "converzia_webhook_requests_total",
    "Meta webhook POSTs by outcome: accepted, ignored, invalid_signature, invalid_input, too_large,"
    " unavailable.",
    ["outcome"],
)
INBOX_CHANGES = Counter(
    "converzia_inbox_changes_total",
    "Leadgen changes settled by the ingestion job, by resulting status.",
    ["status"],
)
LEDGER_ENTRIES = Counter(
    "converzia_ledger_entries_total",
    "Credit ledger rows written, by transaction type (consumptions and refunds among them).",
    ["transaction_type"],
)
CREDIT_ALERTS = Counter(
    "converzia_credit_alerts_total",
    "Tenants whose balance crossed below their low-credit threshold (LOW_CREDITS) or reached 0"
    " (ZERO_CREDITS).",
    ["alert_type"],
)
DELIVERIES = Counter(
    "converzia_deliveries_total",
    "Delivery attempts and state changes by outcome: delivered, failed, dead_letter, refused,"
    " blocked_no_destination, blocked_no_credits, destination_disabled.",
    ["outcome"],
)
DELIVERY_SEND_SECONDS = Histogram(
    "converzia_delivery_send_seconds",
    "Time from the start of an outbound delivery request to its outcome.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
CACHE_REQUESTS = Counter(
    "converzia_cache_requests_total",
    "Cache reads by key family and outcome: hit, miss, error (Redis failed; answered from the"
    " database), skipped (Redis failed recently; not tried).",
    ["family", "outcome"],
)

# --- HTTP (converzia.middleware.RequestMetricsMiddleware) -----------------------------------------
# 1 ms … 10 s: the API's targets run from 100 ms (P50 of a simple read) to 5 s (P99 of a webhook).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Routes are URL patterns (`api/portal/leads/<uuid:lead_id>`), never raw paths: bounded cardinality.
UNMATCHED_ROUTE = "unmatched"
HTTP_REQUEST_SECONDS = Histogram(
    "converzia_http_request_duration_seconds",
    "Time to answer a request, by URL pattern (route; 'unmatched' when none matched) and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
HTTP_RESPONSES = Counter(
    "converzia_http_responses_total",
    "Responses by URL pattern, method and status class (2xx, 3xx, 4xx, 5xx).",
    ["route", "method", "status_class"],
)

# --- Database (converzia.db.timeouts.guarded) -----------------------------------------------------
DB_QUERY_SECONDS = Histogram(
    "converzia_db_query_duration_seconds",
    "DB query time: each attempt of a timeout-guarded query (or block), by its name.",
    ["query"],
    buckets=LATENCY_BUCKETS,
)
DB_QUERY_TIMEOUTS = Counter(
    "converzia_db_query_timeouts_total",
    "Attempts of a guarded query cancelled by its statement or lock timeout, by query name.",
    ["query"],
)

# --- Background worker (converzia/management/commands/run_worker.py) ------------------------------
WORKER_DATABASE_OUTAGES = Counter(
    "converzia_worker_database_outages_total",
    "Times a job worker lost its database: it stopped taking jobs and reconnected (counted when the"
    " outage begins).",
)
WORKER_DATABASE_OUTAGE_SECONDS = Histogram(
    "converzia_worker_database_outage_seconds",
    "How long each worker database outage lasted, from the worker noticing it to the database"
    " answering again.",
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
