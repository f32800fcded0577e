"""Prometheus metrics: every metric is declared here, once, so names and labels stay consistent.

Exposition (`/metrics`, multiprocess mode for gunicorn) is wired by the observability work; the
counters below are already incremented where the events happen.
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
