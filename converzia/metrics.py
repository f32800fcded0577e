"""Prometheus metrics: every metric is declared here, once, so names and labels stay consistent.

Exposition (`/metrics`, multiprocess mode for gunicorn) is wired by the observability work; the
counters below are already incremented where the events happen.
"""

from __future__ import annotations

from prometheus_client import Counter

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
