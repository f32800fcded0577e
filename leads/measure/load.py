"""The pieces of the ingestion measurement: the fixture tenant, the signed-POST load generator, and the
wait for the worker. `manage.py measure_ingestion` strings them together."""

from __future__ import annotations

import http.client
import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from django.db import transaction
from django.db.models import Count, Max

from converzia.models import Tenant, TenantStatus
from leads.measure.payloads import leadgen_body
from leads.meta import signature_header
from leads.models import AdOfferMap, InboxChange, InboxChangeStatus, Offer, OfferStatus

MEASURE_SLUG = "measure-ingestion"
MEASURE_AD_ID = "990000000000001"
MEASURE_PAGE_ID = "990000000000002"
MEASURE_FORM_ID = "990000000000003"
# Leadgen ids of measurement runs: 15 digits, so text order is number order and the next run can
# start after the last one (a new id is a new person: the stub derives the phone from it).
LEADGEN_ID_BASE = 800_000_000_000_000
WEBHOOK_PATH = "/api/webhooks/meta-leads"


@dataclass(frozen=True)
class MeasureRoute:
    tenant_id: object
    ad_id: str


def measure_route_ensure() -> MeasureRoute:
    """The measurement tenant, its offer and the ad mapping, created once and reused (idempotent)."""
    with transaction.atomic():
        tenant, _ = Tenant.objects.get_or_create(
            slug=MEASURE_SLUG, defaults={"name": "Ingestion measurement", "status": TenantStatus.ACTIVE}
        )
        offer, _ = Offer.objects.get_or_create(
            tenant=tenant,
            slug=MEASURE_SLUG,
            defaults={"name": "Ingestion measurement", "status": OfferStatus.ACTIVE},
        )
        mapping, _ = AdOfferMap.objects.get_or_create(
            ad_id=MEASURE_AD_ID, defaults={"tenant": tenant, "offer": offer, "is_active": True}
        )
        if mapping.tenant_id != tenant.pk:
            raise ValueError(f"Ad {MEASURE_AD_ID} is mapped to another tenant; cannot measure with it.")
        if not mapping.is_active or mapping.offer_id != offer.pk:
            mapping.is_active, mapping.offer = True, offer
            mapping.save(update_fields=["is_active", "offer", "updated_at"])
    return MeasureRoute(tenant_id=tenant.pk, ad_id=MEASURE_AD_ID)


def next_leadgen_number(route: MeasureRoute) -> int:
    last = InboxChange.objects.filter(ad_id=route.ad_id).aggregate(last=Max("leadgen_id"))["last"]
    return max(LEADGEN_ID_BASE, int(last) + 1) if last and last.isdigit() else LEADGEN_ID_BASE


@dataclass(frozen=True)
class SignedPost:
    body: bytes
    signature: str
    leadgen_ids: tuple[str, ...]


def signed_posts(
    *, route: MeasureRoute, first_number: int, events: int, changes_per_event: int, secret: str
) -> list[SignedPost]:
    """Every body built and signed up front, so the timed part only sends."""
    created_time = int(time.time())
    posts = []
    for event in range(events):
        start = first_number + event * changes_per_event
        ids = tuple(str(number) for number in range(start, start + changes_per_event))
        body = leadgen_body(
            page_id=MEASURE_PAGE_ID,
            ad_id=route.ad_id,
            form_id=MEASURE_FORM_ID,
            leadgen_ids=ids,
            created_time=created_time,
        )
        posts.append(SignedPost(body=body, signature=signature_header(body, secret), leadgen_ids=ids))
    return posts


@dataclass
class PostResults:
    latencies_s: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    accepted_changes: int = 0
    started_at: float = 0.0  # wall clock (time.time), comparable with the worker's processed_at
    finished_at: float = 0.0
    accepted_ids: list[str] = field(default_factory=list)


class _Client:
    """One keep-alive connection per thread; reconnects when the server closes (gunicorn sync workers
    close after every response, gthread workers keep the connection)."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.connection: http.client.HTTPConnection | None = None

    def post(self, path: str, post: SignedPost) -> tuple[int, bytes]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            self.connection.request(
                "POST",
                path,
                body=post.body,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": post.signature},
            )
            response = self.connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, payload

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def post_all(
    *, url: str, posts: Sequence[SignedPost], concurrency: int, timeout_s: float = 30.0
) -> PostResults:
    """POST every body with `concurrency` threads; each POST's ack latency is request sent → body read."""
    target = urlsplit(url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    path = target.path.rstrip("/") + WEBHOOK_PATH if target.path not in ("", "/") else WEBHOOK_PATH
    results = PostResults()
    lock = threading.Lock()
    next_index = iter(range(len(posts)))

    def run() -> None:
        client = _Client(host, port, timeout_s)
        latencies: list[float] = []
        failures: Counter[str] = Counter()
        accepted: list[str] = []
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                break
            post = posts[index]
            started = time.perf_counter()
            try:
                status, _ = client.post(path, post)
            except (OSError, http.client.HTTPException) as exc:
                failures[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)
            if status == 200:
                accepted.extend(post.leadgen_ids)
            else:
                failures[f"HTTP {status}"] += 1
        client.close()
        with lock:
            results.latencies_s.extend(latencies)
            results.failures.update(failures)
            results.accepted_ids.extend(accepted)

    threads = [threading.Thread(target=run, name=f"poster-{n}") for n in range(concurrency)]
    results.started_at = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.finished_at = time.time()
    results.accepted_changes = len(results.accepted_ids)
    return results


@dataclass(frozen=True)
class ProcessingResults:
    statuses: dict[str, int]
    last_processed_at: datetime | None
    # Per change: webhook stored it → worker finished it (queue wait + Graph fetch + upserts).
    ingest_latencies_s: list[float]
    timed_out: bool


def wait_processed(
    *, route: MeasureRoute, first_id: str, last_id: str, expected: int, timeout_s: float, poll_s: float = 0.25
) -> ProcessingResults:
    """Poll the inbox until `expected` changes of the id range are no longer PENDING (or time is up)."""
    changes = InboxChange.objects.filter(ad_id=route.ad_id, leadgen_id__gte=first_id, leadgen_id__lte=last_id)
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = dict(changes.values_list("status").annotate(count=Count("pk")).order_by())
        settled = sum(count for status, count in statuses.items() if status != InboxChangeStatus.PENDING)
        timed_out = time.monotonic() > deadline
        if settled >= expected or timed_out:
            break
        time.sleep(poll_s)
    rows = list(changes.exclude(processed_at=None).values_list("created_at", "processed_at"))
    return ProcessingResults(
        statuses=statuses,
        last_processed_at=max((processed for _, processed in rows), default=None),
        ingest_latencies_s=[(processed - created).total_seconds() for created, processed in rows],
        timed_out=timed_out and settled < expected,
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation): a value that was actually observed."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
