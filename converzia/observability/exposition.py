"""The `/metrics` payload: the process's metrics (or every gunicorn worker's, in multiprocess mode)
plus gauges computed at scrape time from the database.

Multiprocess mode is on when `PROMETHEUS_MULTIPROC_DIR` is set (before the first import of
prometheus_client): each process writes its counters and histograms to files in that directory, and a
scrape, answered by whichever worker, sums them (`converzia/gunicorn_conf.py` empties the directory at
start and marks dead workers). Without it, the default registry of this process is exposed.

Queue depth and stats-view age are read from the database by the scraping process only, once per
scrape, so N workers never multiply them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from converzia.observability.probes import QueueSnapshot, queue_snapshot, stats_view_snapshot

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ScrapeTimeCollector(Collector):
    """Gauges read from the database when scraped: queue depth and ages, stats view age."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "converzia_scrape_probe_up",
            "1 when the scrape-time probe (queue, stats_view) answered, 0 when it failed.",
            labels=["probe"],
        )
        try:
            queue = queue_snapshot()
        except Exception:  # noqa: BLE001 — a sick database must not break the whole scrape
            logger.warning("queue probe failed during a metrics scrape", exc_info=True)
            up.add_metric(["queue"], 0)
        else:
            if queue is not None:
                up.add_metric(["queue"], 1)
                yield from _queue_families(queue)
        try:
            stats_view = stats_view_snapshot()
        except Exception:  # noqa: BLE001
            logger.warning("stats view probe failed during a metrics scrape", exc_info=True)
            up.add_metric(["stats_view"], 0)
        else:
            if stats_view is not None:
                up.add_metric(["stats_view"], 1)
                yield GaugeMetricFamily(
                    "converzia_stats_view_age_seconds",
                    "Seconds since tenant_stats_materialized was last refreshed (-1: never refreshed).",
                    value=stats_view.age_s if stats_view.age_s is not None else -1,
                )
        yield up


def _queue_families(queue: QueueSnapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "converzia_queue_pending_events",
        "Meta webhook inbox events waiting to be processed.",
        value=queue.pending_events,
    )
    yield GaugeMetricFamily(
        "converzia_queue_oldest_pending_age_seconds",
        "Age of the oldest pending inbox event (0 when none is pending).",
        value=queue.oldest_pending_age_s or 0,
    )
    yield GaugeMetricFamily(
        "converzia_queue_due_deliveries",
        "Deliveries due to be sent now (pending or failed, next attempt reached, not leased).",
        value=queue.due_deliveries,
    )
    yield GaugeMetricFamily(
        "converzia_queue_oldest_due_age_seconds",
        "How long the oldest due delivery has been due (0 when none is).",
        value=queue.oldest_due_age_s or 0,
    )


class _ProcessRegistry(Collector):
    """This process's default registry, as one collector of the scrape's registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def scrape_registry() -> CollectorRegistry:
    """A fresh registry per scrape: every process's metrics (or this one's), then the scrape-time gauges."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        MultiProcessCollector(registry)
    else:
        registry.register(_ProcessRegistry())
    registry.register(ScrapeTimeCollector())
    return registry


def render() -> bytes:
    """The exposition body (Prometheus text format, `CONTENT_TYPE`)."""
    return generate_latest(scrape_registry())
