"""Meta lead ingestion (decision D4): the webhook's durable write, and the job that turns each stored
leadgen change into exactly one lead_source and one lead_offer.

The inbox is the record. The webhook stores the event and its changes and wakes a drain in one
transaction. A drain (`leads.drain_inbox`) claims pending events in batches, whoever sent them, so
under load one job carries hundreds of changes even when Meta posts them one by one; an event whose
changes hit a transient error is handed to its own job (`leads.process_inbox_event`), which retries
it with backoff. Each change is handled in its own transaction, which also marks the change done,
so a crash can never mark a lead as seen without creating it, and a rerun skips what was done.
Slow calls (the Graph API) happen outside any transaction.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone
from psycopg.types.json import Jsonb

from converzia.cache import invalidate_tenant
from converzia.db.timeouts import guarded
from converzia.jobs import DATABASE_TRANSIENT_ERRORS
from converzia.metrics import INBOX_CHANGES
from converzia.models import Tenant
from converzia.request_context import current_trace_id, request_id_var
from leads import meta
from leads.errors import InvalidPhone
from leads.models import (
    AdOfferMap,
    BillingEligibility,
    InboxChange,
    InboxChangeStatus,
    InboxEvent,
    InboxEventStatus,
    LeadEventType,
    LeadOffer,
    LeadOfferStatus,
    LeadSource,
)
from leads.phones import normalize_phone
from leads.services import lead_event_record, lead_offer_transition

logger = logging.getLogger(__name__)

EVENT_SOURCE = "META_LEAD_AD"
# Statuses after which an earlier lead_offer no longer makes a new one a duplicate (is_duplicate_lead).
_DUPLICATE_IGNORES = (LeadOfferStatus.DISQUALIFIED, LeadOfferStatus.STOPPED)


class InboxRetryLater(Exception):
    """Some changes hit a transient error (Graph 5xx, timeout, rate limit): retry the job later."""


# --- The webhook's write -------------------------------------------------------------------------------


def inbox_event_store(*, payload: dict[str, Any], changes: list[meta.LeadgenChange]) -> InboxEvent:
    """Store one Meta POST and wake a drain for it, in one transaction under the webhook's budget."""

    def store() -> InboxEvent:
        event = InboxEvent.objects.create(
            object=str(payload.get("object", "")),
            payload=payload,
            leadgen_ids=[change.leadgen_id for change in changes],
            change_count=len(changes),
            request_id=current_trace_id(),
        )
        InboxChange.objects.bulk_create(
            [
                InboxChange(
                    event=event,
                    position=position,
                    leadgen_id=change.leadgen_id,
                    page_id=change.page_id,
                    form_id=change.form_id,
                    ad_id=change.ad_id,
                    adgroup_id=change.adgroup_id,
                    submitted_at=change.submitted_at,
                    value=change.value,
                    created_at=event.received_at,
                )
                for position, change in enumerate(changes)
            ]
        )
        inbox_drain_wake(drain_shard(event.pk))
        return event

    return guarded("webhook.inbox.store", timeout_ms=settings.WEBHOOK_STATEMENT_TIMEOUT_MS).run(store)


# --- Drains: one job for many events -------------------------------------------------------------------
#
# The webhook defers a drain under a queueing lock, one of `drain_shards()` by event id, so at most that
# many drains wait in the queue (and as many run at once) whatever the rate of POSTs. A running drain
# claims pending events in batches (`FOR UPDATE SKIP LOCKED`, then `claimed_by_job` = its job id, in
# one short statement) until none is left. A claimed event is skipped by other drains while its
# claimer is queued or running; a claimer that failed, ended or vanished leaves the event claimable
# again. A claimer killed mid-batch stops holding its events once its worker's heartbeat is older than
# WORKER_STALLED_AFTER_S (the next drain, or the one the stale sweep queues, takes them); the
# stalled-job recovery may also rerun it, with its own id, so it finds its claims again.
#
# No event is stranded by a drain finishing its last scan as a new event commits: the webhook either
# inserts a new drain job in the event's own transaction (it starts after the event is visible), or
# joins the shard's queued drain by taking a share lock on that job's row until its commit. The worker
# fetches jobs with `FOR UPDATE SKIP LOCKED`, so the joined drain cannot start (cannot begin its scan)
# before the event is visible either; a drain already running is never relied upon. Joining also
# sends the NOTIFY a job insert would, so an idle worker that skipped the locked job wakes at commit.

# At least the worker's concurrency, so that many drains can run at once.
DRAIN_SHARDS_MIN = 16
# A claim takes up to this many events, stopping once it holds this many changes (at least one event).
DRAIN_BATCH_EVENTS = 50
DRAIN_BATCH_CHANGES = 200
# A drain hands over to a successor after this long, so a worker's SIGTERM grace is never spent
# waiting for a drain that would run as long as the load lasts.
DRAIN_BUDGET_S = 5.0


def drain_shards() -> int:
    return max(DRAIN_SHARDS_MIN, settings.WORKER_CONCURRENCY)


def drain_shard(event_id: int) -> int:
    return event_id % drain_shards()


def drain_queueing_lock(shard: int) -> str:
    return f"inbox-drain:{shard}"


# The shard's queued drain, share-locked until the caller commits (it cannot be fetched meanwhile),
# with the notification procrastinate's insert trigger sends for a new job.
_DRAIN_JOIN_SQL = """
WITH queued AS (
    SELECT id, queue_name FROM procrastinate_jobs WHERE queueing_lock = %s AND status = 'todo' FOR SHARE
), payload AS (
    SELECT id, queue_name, json_build_object('type', 'job_inserted', 'job_id', id)::text AS body FROM queued
)
SELECT id, pg_notify('procrastinate_queue_v1#' || queue_name, body),
       pg_notify('procrastinate_any_queue_v1', body)
FROM payload
"""


def inbox_drain_wake(shard: int) -> bool:
    """Make sure a drain that has not started yet is queued for `shard`, in the caller's transaction
    (which must be open: the share lock on a joined drain lasts until it commits). True when a new
    job was deferred, False when the queued one was joined."""
    from procrastinate import exceptions as procrastinate_exceptions

    from leads.tasks import drain_inbox

    lock = drain_queueing_lock(shard)
    while True:
        with connection.cursor() as cursor:
            cursor.execute(_DRAIN_JOIN_SQL, [lock])
            if cursor.fetchone() is not None:
                return False
        try:
            # A savepoint: a concurrent caller may queue the shard's drain first.
            with transaction.atomic():
                drain_inbox.configure(queueing_lock=lock).defer(shard=shard)
        except procrastinate_exceptions.AlreadyEnqueued:
            continue  # join that one (or, if it started meanwhile, queue the next)
        return True


# Claimable: pending, and not held by a live job: one queued, or running on a worker whose heartbeat
# is recent (a worker killed mid-drain stops beating; its drain's claims are then free, before the
# stalled-job recovery even looks). A drain's own claims are its to take again when the recovery
# reruns it.
_CLAIMABLE_SQL = """
    e.status = 'PENDING' AND (
        e.claimed_by_job IS NULL OR e.claimed_by_job = %(job_id)s OR NOT EXISTS (
            SELECT 1 FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
            WHERE j.id = e.claimed_by_job AND (
                j.status = 'todo'
                OR (j.status = 'doing' AND w.last_heartbeat >= now() - make_interval(secs => %(stalled_s)s))
            )
        )
    )
"""

_DRAIN_CLAIM_SQL = f"""
WITH candidates AS (
    SELECT e.id, e.received_at, e.change_count FROM webhook_inbox_events e
    WHERE {_CLAIMABLE_SQL}
    ORDER BY e.received_at, e.id
    LIMIT %(events)s
    FOR UPDATE OF e SKIP LOCKED
), chosen AS (
    SELECT id FROM (
        SELECT id, sum(change_count) OVER (ORDER BY received_at, id) - change_count AS before FROM candidates
    ) running
    WHERE before < %(changes)s
)
UPDATE webhook_inbox_events e SET claimed_by_job = %(job_id)s, attempts = e.attempts + 1
FROM chosen WHERE e.id = chosen.id
RETURNING e.id, e.request_id, e.change_count
"""

_EVENT_CLAIM_SQL = "UPDATE webhook_inbox_events SET claimed_by_job = %s WHERE id = %s"


@dataclass
class DrainReport:
    claims: int = 0
    events: int = 0
    changes: int = 0
    retries: int = 0
    handed_over: bool = False


def inbox_drain(*, job_id: int, shard: int, budget_s: float | None = None) -> DrainReport:
    """The drain job's work: claim and process batches of pending events until none is claimable
    (or the budget is spent: then a successor is woken for the rest).

    An event with a change left pending by a transient error goes to its own retry job (first retry
    after the same backoff its job would have used), which claims it; drains leave it alone from then.
    """
    from leads.tasks import INGESTION_RETRY

    report = DrainReport()
    deadline = time.monotonic() + (DRAIN_BUDGET_S if budget_s is None else budget_s)
    while True:
        with guarded("ingest.drain.claim"), connection.cursor() as cursor:
            cursor.execute(
                _DRAIN_CLAIM_SQL,
                {
                    "job_id": job_id,
                    "stalled_s": settings.WORKER_STALLED_AFTER_S,
                    "events": DRAIN_BATCH_EVENTS,
                    "changes": DRAIN_BATCH_CHANGES,
                },
            )
            claimed = {
                event_id: _EventRow(request_id, change_count)
                for event_id, request_id, change_count in cursor.fetchall()
            }
        if not claimed:
            return report
        report.claims += 1
        report.events += len(claimed)
        outcomes = _events_process(claimed, final_attempt=False)
        for event_id, outcome in outcomes.items():
            report.changes += sum(outcome.counts.values())
            if outcome.retry_later:
                report.retries += 1
                # The wait procrastinate schedules after a job's first failed run (2 s).
                first_wait_s = INGESTION_RETRY.exponential_wait**1
                inbox_event_defer(event_id, prior_attempts=1, retry_in_s=first_wait_s)
        if time.monotonic() >= deadline:
            with transaction.atomic():
                inbox_drain_wake(shard)
            report.handed_over = True
            return report


def inbox_event_defer(event_id: int, *, prior_attempts: int = 0, retry_in_s: int | None = None) -> bool:
    """Defer the event's own job and make it the event's claimer, so drains leave the event to it.
    False when one is already queued for it (that one becomes the claimer).

    Used for retries (`prior_attempts`: runs the event already had, so the backoff and the final
    attempt come exactly as if the job had run them) and by staff requeues. The queueing lock: never
    two queued jobs for one event. Runs in the caller's transaction, or its own.
    """
    from procrastinate import exceptions as procrastinate_exceptions

    from leads.tasks import process_inbox_event

    lock = f"inbox-event:{event_id}"
    job = process_inbox_event.configure(
        queueing_lock=lock, schedule_in={"seconds": retry_in_s} if retry_in_s else None
    )
    kwargs: dict[str, int] = {"event_id": event_id}
    if prior_attempts:
        kwargs["prior_attempts"] = prior_attempts
    with transaction.atomic():
        try:
            with transaction.atomic():
                job_id = job.defer(**kwargs)
            deferred = True
        except procrastinate_exceptions.AlreadyEnqueued:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT id FROM procrastinate_jobs"
                    " WHERE queueing_lock = %s AND status IN ('todo', 'doing') ORDER BY id DESC LIMIT 1",
                    [lock],
                )
                row = cursor.fetchone()
            job_id, deferred = (row[0] if row else None), False
        with connection.cursor() as cursor:
            cursor.execute(_EVENT_CLAIM_SQL, [job_id, event_id])
    return deferred


# --- The processing ------------------------------------------------------------------------------------


@dataclass
class InboxEventOutcome:
    event_id: int
    counts: dict[str, int] = field(default_factory=dict)
    retry_later: bool = False

    def count(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1


@dataclass(frozen=True)
class _EventRow:
    request_id: str
    change_count: int


@dataclass(frozen=True)
class _Fetched:
    lead: dict[str, Any] | None = None
    error: meta.GraphError | None = None


def inbox_event_process(event_id: int, *, final_attempt: bool = False) -> InboxEventOutcome:
    """The event's own job: process its pending changes, each in its own transaction.

    Transient Graph errors leave a change pending with its error; unless this is the job's final
    attempt (then the change is parked as FAILED), `InboxRetryLater` is raised at the end so the
    queue retries the job with backoff. Done changes are never touched again.
    """
    with guarded("ingest.event.start"), connection.cursor() as cursor:
        cursor.execute(_EVENT_START_SQL, [event_id])
        row = cursor.fetchone()
    if row is None:
        return InboxEventOutcome(event_id=event_id)
    outcome = _events_process({event_id: _EventRow(row[0], row[1])}, final_attempt=final_attempt)[event_id]
    if outcome.retry_later:
        raise InboxRetryLater(f"inbox event {event_id}: {outcome.counts}")
    return outcome


def _events_process(events: dict[int, _EventRow], *, final_attempt: bool) -> dict[int, InboxEventOutcome]:
    """Process the pending changes of `events` as one batch: one routing query, one replay check and
    one round of Graph fetches for all of them, then each change in its own transaction, then one
    statement that settles every event."""
    outcomes = {event_id: InboxEventOutcome(event_id=event_id) for event_id in events}
    changes = list(
        InboxChange.objects.filter(event_id__in=list(events), status=InboxChangeStatus.PENDING).order_by(
            "event_id", "position"
        )
    )
    routes = _active_routes({change.ad_id for change in changes if change.ad_id})
    seen = _already_ingested(changes, routes)
    to_fetch = [
        change
        for change in changes
        if change.ad_id in routes and (routes[change.ad_id].tenant_id, change.leadgen_id) not in seen
    ]
    fetched = _graph_fetch_all(to_fetch)
    loaded: dict[int, int] = dict.fromkeys(events, 0)
    token_failures: list[InboxChange] = []
    for change in changes:
        loaded[change.event_id] += 1
        event = events[change.event_id]
        token = request_id_var.set(event.request_id or f"inbox-{change.event_id}")
        route = routes.get(change.ad_id)
        try:
            status = _change_ingest(
                change,
                route=route,
                fetched=fetched.get(change.pk),
                replay=route is not None and (route.tenant_id, change.leadgen_id) in seen,
                final_attempt=final_attempt,
            )
        except DATABASE_TRANSIENT_ERRORS:
            # The connection itself is gone: nothing more can be recorded; the job ends here.
            raise
        except Exception as exc:  # noqa: BLE001 — one broken change must not block the ones after it
            status = _change_settle_unexpected(change, exc, final_attempt=final_attempt)
        finally:
            request_id_var.reset(token)
        outcome = outcomes[change.event_id]
        outcome.count(status)
        if status == InboxChangeStatus.PENDING:
            outcome.retry_later = True
        elif status == InboxChangeStatus.FAILED and _token_error(fetched.get(change.pk)) is not None:
            token_failures.append(change)
    if token_failures:
        _log_token_failures(token_failures, fetched)
    # On an event's first pass every change was pending, so this run's outcome is the whole event's.
    _inbox_events_settle(
        [
            (event_id, outcomes[event_id] if loaded[event_id] == event.change_count else None)
            for event_id, event in events.items()
        ]
    )
    return outcomes


def _token_error(fetched: _Fetched | None) -> meta.GraphTokenError | None:
    error = fetched.error if fetched is not None else None
    return error if isinstance(error, meta.GraphTokenError) else None


def _log_token_failures(changes: list[InboxChange], fetched: dict[int, _Fetched]) -> None:
    """One ERROR per batch for a missing or rejected page token (the cause is the same for every
    change; a line per change would bury it), instead of each change's own warning."""
    error = _token_error(fetched.get(changes[0].pk))
    logger.error(
        "%d leadgen change(s) parked as FAILED: %s",
        len(changes),
        error,
        extra={
            "outcome": InboxChangeStatus.FAILED,
            "reason": "graph_token",
            "inbox_change_ids": [change.pk for change in changes],
        },
    )


def _active_routes(ad_ids: Iterable[str]) -> dict[str, AdOfferMap]:
    ad_ids = list(ad_ids)
    if not ad_ids:
        return {}
    mappings = (
        AdOfferMap.objects.filter(ad_id__in=ad_ids, is_active=True)
        .select_related("tenant")
        .only("ad_id", "tenant_id", "offer_id", "tenant__duplicate_window_days")
    )
    return {mapping.ad_id: mapping for mapping in mappings}


def inbox_changes_routed_tenants(changes: Iterable[InboxChange]) -> dict[int, Tenant]:
    """The tenant each change belongs to: the one stored when a job routed it, else (not fetched or
    routed yet) the one its ad's active mapping names, as routing would find it. One query for all
    the changes without a stored tenant (the admin's page of changes); changes with neither are left
    out. Stored tenants must be loaded with the changes (`select_related("tenant")`)."""
    changes = list(changes)
    unrouted_ads = {change.ad_id for change in changes if change.tenant_id is None and change.ad_id}
    by_ad: dict[str, Tenant] = {}
    if unrouted_ads:
        mappings = (
            AdOfferMap.objects.filter(ad_id__in=unrouted_ads, is_active=True)
            .select_related("tenant")
            .only("ad_id", "tenant__id", "tenant__name")
        )
        by_ad = {mapping.ad_id: mapping.tenant for mapping in mappings}
    tenants: dict[int, Tenant] = {}
    for change in changes:
        tenant = change.tenant if change.tenant_id is not None else by_ad.get(change.ad_id)
        if tenant is not None:
            tenants[change.pk] = tenant
    return tenants


def _already_ingested(
    changes: list[InboxChange], routes: dict[str, AdOfferMap]
) -> set[tuple[uuid.UUID, str]]:
    """(tenant, leadgen_id) pairs that already have a lead_source: replays skip the Graph call."""
    pairs = {(routes[c.ad_id].tenant_id, c.leadgen_id) for c in changes if c.ad_id in routes}
    if not pairs:
        return set()
    # One index probe per leadgen id (idx_lead_sources_leadgen_id); the pairs are matched here.
    found = LeadSource.objects.filter(
        leadgen_id__in={leadgen_id for _, leadgen_id in pairs},
        tenant_id__in={tenant_id for tenant_id, _ in pairs},
    ).values_list("tenant_id", "leadgen_id")
    return set(found) & pairs


# One Graph client per process: creating one builds an SSL context (milliseconds), and httpx clients
# are thread-safe. Rebuilt when the settings it was made from change (tests point it elsewhere).
_graph_lock = threading.Lock()
_graph_state: dict[str, Any] = {"key": None, "client": None}


def _graph() -> httpx.Client:
    key = (settings.META_GRAPH_URL, settings.META_GRAPH_TIMEOUT_S)
    with _graph_lock:
        if _graph_state["key"] != key:
            if _graph_state["client"] is not None:
                _graph_state["client"].close()
            _graph_state.update(key=key, client=meta.graph_client())
        return _graph_state["client"]


def _graph_fetch_one(change: InboxChange) -> _Fetched:
    try:
        return _Fetched(lead=meta.graph_lead_fetch(_graph(), change.leadgen_id))
    except meta.GraphError as exc:
        return _Fetched(error=exc)


# Graph fetches of one event run on a shared pool (HTTP only: its threads never touch the database);
# starting threads for every event would cost more than the fetches.
_graph_pool_lock = threading.Lock()
_graph_pool: dict[int, ThreadPoolExecutor] = {}


def _graph_executor() -> ThreadPoolExecutor:
    size = settings.META_GRAPH_CONCURRENCY
    with _graph_pool_lock:
        if size not in _graph_pool:
            _graph_pool[size] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="graph")
        return _graph_pool[size]


def _graph_fetch_all(changes: list[InboxChange]) -> dict[int, _Fetched]:
    """Fetch the Graph leads of a batch concurrently, `META_GRAPH_CONCURRENCY` at a time."""
    if len(changes) <= 1:
        return {change.pk: _graph_fetch_one(change) for change in changes}
    results = _graph_executor().map(_graph_fetch_one, changes)
    return {change.pk: result for change, result in zip(changes, results, strict=True)}


def _change_ingest(
    change: InboxChange,
    *,
    route: AdOfferMap | None,
    fetched: _Fetched | None,
    replay: bool,
    final_attempt: bool,
) -> str:
    """One change, one transaction (under the statement timeout). Returns the change's new status."""
    return guarded("ingest.change", retries=1).run(
        _change_ingest_locked, change, route, fetched, replay, final_attempt
    )


def _change_ingest_locked(
    change: InboxChange, route: AdOfferMap | None, fetched: _Fetched | None, replay: bool, final_attempt: bool
) -> str:
    with connection.cursor() as cursor:
        cursor.execute(_CHANGE_LOCK_SQL, [change.pk])
        row = cursor.fetchone()
    status = row[0] if row else None
    if status != InboxChangeStatus.PENDING:
        # Another job got here first (a sweep re-deferral racing a slow job): nothing to do.
        return status or InboxChangeStatus.PROCESSED
    if route is None:
        reason = (
            "The change has no ad_id (organic or test lead)."
            if not change.ad_id
            else f"No active ad mapping for ad {change.ad_id}."
        )
        return _change_settle(change, InboxChangeStatus.UNROUTED, error=reason)
    if replay:
        return _change_settle_replay(change, route)

    if fetched is None or fetched.error is not None:
        error = fetched.error if fetched is not None else None
        if error is None or (error.transient and not final_attempt):
            return _change_settle(
                change,
                InboxChangeStatus.PENDING,
                tenant_id=route.tenant_id,
                error=str(error or "The Graph lead is fetched on the retry."),
            )
        # A token error (missing or rejected) is parked at once too: it is not transient, and retries
        # would only burn attempts until staff fix the setting and requeue. Logged once per batch.
        return _change_settle(
            change,
            InboxChangeStatus.FAILED,
            tenant_id=route.tenant_id,
            error=str(error),
            log=not isinstance(error, meta.GraphTokenError),
        )
    graph_lead = fetched.lead or {}
    if not isinstance(graph_lead.get("field_data"), list):
        return _change_settle(
            change,
            InboxChangeStatus.FAILED,
            tenant_id=route.tenant_id,
            error="The Graph lead has no field_data.",
        )

    fields = meta.extract_lead_fields(graph_lead)
    try:
        phone = normalize_phone(fields.phone)
    except InvalidPhone as exc:
        return _change_settle(
            change,
            InboxChangeStatus.FAILED,
            tenant_id=route.tenant_id,
            error=f"No usable phone: {exc.message}",
        )

    lead_id, source_id = _lead_and_source_upsert(change, route, phone, fields, graph_lead)
    if source_id is None:
        # Another job stored this leadgen_id for the tenant since the batch was checked.
        return _change_settle_replay(change, route)
    lead_offer_id = _lead_offer_attach(change, route, lead_id, source_id, fields)
    invalidate_tenant(route.tenant_id)
    return _change_settle(
        change, InboxChangeStatus.PROCESSED, tenant_id=route.tenant_id, lead_offer_id=lead_offer_id
    )


def _change_settle_replay(change: InboxChange, route: AdOfferMap) -> str:
    """The tenant already has this leadgen_id: link the change to its lead_offer and create nothing."""
    found = (
        LeadSource.objects.for_tenant(route.tenant_id)
        .filter(leadgen_id=change.leadgen_id)
        .values_list("pk", "lead_offers__pk")
        .first()
    )
    if found is None:
        # Its source vanished since the batch was checked (deleted by staff): fetch and ingest on the retry.
        return _change_settle(
            change, InboxChangeStatus.PENDING, error="The Graph lead is fetched on the retry."
        )
    return _change_settle(change, InboxChangeStatus.REPLAY, tenant_id=route.tenant_id, lead_offer_id=found[1])


def _change_settle_unexpected(change: InboxChange, exc: Exception, *, final_attempt: bool) -> str:
    """A change whose transaction failed (a statement timeout, a data error, a bug). Its transaction was
    rolled back; record the error outside it and retry later like a transient Graph error, then park it
    as FAILED on the job's final attempt, so the event neither blocks its other changes nor loops."""
    status = InboxChangeStatus.FAILED if final_attempt else InboxChangeStatus.PENDING
    error = f"Unexpected error ({type(exc).__name__}): {exc}"[:1000]
    logger.exception(
        "leadgen %s %s after an unexpected error",
        change.leadgen_id,
        status.lower(),
        extra={"leadgen_id": change.leadgen_id, "inbox_change_id": change.pk, "outcome": status},
    )
    InboxChange.objects.filter(pk=change.pk, status=InboxChangeStatus.PENDING).update(
        status=status,
        attempts=F("attempts") + 1,
        last_error=error,
        processed_at=timezone.now() if status == InboxChangeStatus.FAILED else None,
    )
    return status


def _change_settle(
    change: InboxChange,
    status: str,
    *,
    error: str = "",
    tenant_id: uuid.UUID | None = None,
    lead_offer_id: uuid.UUID | None = None,
    log: bool = True,
) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            _CHANGE_SETTLE_SQL,
            {
                "id": change.pk,
                "status": status,
                "error": error,
                "processed_at": None if status == InboxChangeStatus.PENDING else timezone.now(),
                "tenant_id": tenant_id,
                "lead_offer_id": lead_offer_id,
            },
        )
    INBOX_CHANGES.labels(status).inc()
    if log and (status in InboxChangeStatus.parked() or status == InboxChangeStatus.PENDING):
        logger.warning(
            "leadgen %s %s: %s",
            change.leadgen_id,
            status.lower(),
            error,
            extra={"leadgen_id": change.leadgen_id, "inbox_change_id": change.pk, "outcome": status},
        )
    return status


# The per-change statements are written out in SQL: each runs once per lead, and building the same
# statement with the ORM costs about 0.35 ms of CPU against 0.1 ms for the query itself (measured with
# `manage.py measure_ingestion`; see docs/ingestion.md, "Throughput"). They run inside the
# change's guarded transaction, with bound parameters.
_EVENT_START_SQL = (
    "UPDATE webhook_inbox_events SET attempts = attempts + 1 WHERE id = %s RETURNING request_id, change_count"
)
_EVENTS_SETTLE_SQL = """
UPDATE webhook_inbox_events e
SET status = s.status, last_error = s.last_error,
    processed_at = CASE WHEN s.status = 'PENDING' THEN NULL ELSE statement_timestamp() END
FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS s(id, status, last_error)
WHERE e.id = s.id
"""
_CHANGE_LOCK_SQL = "SELECT status FROM webhook_inbox_changes WHERE id = %s FOR UPDATE"

_CHANGE_SETTLE_SQL = """
UPDATE webhook_inbox_changes
SET status = %(status)s, attempts = attempts + 1, last_error = %(error)s, processed_at = %(processed_at)s,
    tenant_id = COALESCE(%(tenant_id)s, tenant_id), lead_offer_id = COALESCE(%(lead_offer_id)s, lead_offer_id)
WHERE id = %(id)s
"""

# The tenant's rows for one person: a handful at most (one per offer), by the (lead, offer, tenant) index.
_PERSON_ROWS_SQL = """
SELECT id, offer_id, status, created_at FROM lead_offers
WHERE lead_id = %s AND tenant_id = %s ORDER BY created_at
"""

# A new funnel row and its CREATED event in one statement.
_LEAD_OFFER_CREATE_SQL = """
WITH created AS (
    INSERT INTO lead_offers (id, created_at, updated_at, lead_id, tenant_id, offer_id, lead_source_id, status,
                             previous_status, status_changed_at, qualification_fields, score_breakdown,
                             billing_eligibility, billing_notes, contact_attempts, next_attempt_at,
                             reactivation_count, disqualification_reason, disqualification_category)
    VALUES (%(id)s, %(now)s, %(now)s, %(lead_id)s, %(tenant_id)s, %(offer_id)s, %(source_id)s, %(status)s,
            '', %(now)s, %(qualification)s, '{}', %(billing)s, %(billing_notes)s, 0, %(next_attempt_at)s,
            0, '', '')
    RETURNING id, lead_id, tenant_id
)
INSERT INTO lead_events (id, lead_id, lead_offer_id, tenant_id, event_type, details, actor_type, actor_id,
                         trace_id, created_at)
SELECT %(event_id)s, lead_id, id, tenant_id, 'CREATED', %(details)s, 'SYSTEM', NULL, %(trace_id)s, %(now)s
FROM created
"""


# The person and the attribution in one statement. A known value is never replaced by an empty one (v1
# overwrote PII with nulls). The upsert takes the person's row lock until commit, so two changes for the
# same phone serialise here. The source insert is the idempotency record: no row back means the tenant
# already has this leadgen_id.
_LEAD_AND_SOURCE_UPSERT_SQL = """
WITH person AS (
    INSERT INTO leads (id, phone, email, first_name, last_name, full_name, country_code, language,
                       opted_out, opt_out_reason, created_at, updated_at)
    VALUES (%(lead_id)s, %(phone)s, %(email)s, %(first_name)s, %(last_name)s, %(full_name)s,
            %(country_code)s, 'es', false, '', %(now)s, %(now)s)
    ON CONFLICT (phone) DO UPDATE SET
        email = COALESCE(NULLIF(EXCLUDED.email, ''), leads.email),
        first_name = COALESCE(NULLIF(EXCLUDED.first_name, ''), leads.first_name),
        last_name = COALESCE(NULLIF(EXCLUDED.last_name, ''), leads.last_name),
        full_name = COALESCE(NULLIF(EXCLUDED.full_name, ''), leads.full_name),
        updated_at = EXCLUDED.updated_at
    RETURNING id
), source AS (
    INSERT INTO lead_sources (id, lead_id, tenant_id, leadgen_id, platform, ad_id, adset_id, campaign_id,
                              form_id, form_data, utm_source, utm_medium, utm_campaign, utm_content,
                              utm_term, created_at)
    SELECT %(source_id)s, person.id, %(tenant_id)s, %(leadgen_id)s, 'META', %(ad_id)s, %(adset_id)s,
           %(campaign_id)s, %(form_id)s, %(form_data)s, '', '', '', '', '', %(now)s
    FROM person
    ON CONFLICT (tenant_id, leadgen_id) WHERE leadgen_id IS NOT NULL DO NOTHING
    RETURNING id
)
SELECT person.id, (SELECT id FROM source) FROM person
"""


def _lead_and_source_upsert(
    change: InboxChange,
    route: AdOfferMap,
    phone: str,
    fields: meta.LeadFields,
    graph_lead: dict[str, Any],
) -> tuple[uuid.UUID, uuid.UUID | None]:
    email = fields.email
    try:
        validate_email(email) if email else None
    except ValidationError:
        email = ""
    form_data = {
        "leadgen": change.value,
        "lead": meta.graph_lead_redacted(graph_lead, fields),
        "received_at": change.created_at.isoformat(),
        "inbox_change_id": change.pk,
    }
    with connection.cursor() as cursor:
        cursor.execute(
            _LEAD_AND_SOURCE_UPSERT_SQL,
            {
                "lead_id": uuid.uuid4(),
                "phone": phone,
                "email": email,
                "first_name": fields.first_name,
                "last_name": fields.last_name,
                "full_name": fields.full_name,
                "country_code": _country_code(phone),
                "source_id": uuid.uuid4(),
                "tenant_id": route.tenant_id,
                "leadgen_id": change.leadgen_id,
                "ad_id": change.ad_id,
                "adset_id": str(graph_lead.get("adset_id") or "")[:64],
                "campaign_id": str(graph_lead.get("campaign_id") or "")[:64],
                "form_id": change.form_id or str(graph_lead.get("form_id") or "")[:64],
                "form_data": Jsonb(form_data),
                "now": timezone.now(),
            },
        )
        lead_id, source_id = cursor.fetchone()
    return lead_id, source_id


def _country_code(phone: str) -> str:
    # Non-geographic numbers (+800, +883 …) have the region "001", which is no country (and does not
    # fit leads.country_code): they get the default region.
    region = phonenumbers.region_code_for_number(phonenumbers.parse(phone)) or ""
    is_country = len(region) == 2 and region.isalpha() and region != "ZZ"
    return region if is_country else settings.PHONE_DEFAULT_REGION


def _qualification_prefill(change: InboxChange, fields: meta.LeadFields) -> dict[str, Any]:
    prefill: dict[str, Any] = {
        "meta": {"ad_id": change.ad_id, "leadgen_id": change.leadgen_id, "form_id": change.form_id}
    }
    if fields.full_name:
        prefill["name"] = fields.full_name
    if fields.purpose:
        prefill["purpose"] = fields.purpose
        prefill["is_investor"] = fields.purpose.strip().lower() in ("inversión", "inversion", "investment")
    return prefill


def _lead_offer_attach(
    change: InboxChange, route: AdOfferMap, lead_id: uuid.UUID, source_id: uuid.UUID, fields: meta.LeadFields
) -> uuid.UUID:
    """Create the lead's funnel row for the tenant (and offer), or reuse the one it already has.

    A returning lead keeps its row and status (v1 tried to reset it and tripped the matrix); one that
    had gone cold is reactivated when the matrix allows it. A new row for a person the tenant already
    has inside `duplicate_window_days` is marked NOT_CHARGEABLE_DUPLICATE.
    """
    details = {
        "source": EVENT_SOURCE,
        "ad_id": change.ad_id,
        "form_id": change.form_id,
        "leadgen_id": change.leadgen_id,
        "inbox_change_id": change.pk,
    }
    with connection.cursor() as cursor:
        cursor.execute(_PERSON_ROWS_SQL, [lead_id, route.tenant_id])
        rows = [
            {"pk": pk, "offer_id": offer_id, "status": status, "created_at": created_at}
            for pk, offer_id, status, created_at in cursor.fetchall()
        ]
    same = next((row for row in rows if row["offer_id"] == route.offer_id), None)
    if same is not None:
        existing = LeadOffer(pk=same["pk"], lead_id=lead_id, tenant_id=route.tenant_id, status=same["status"])
        lead_event_record(
            lead_offer=existing,
            event_type=LeadEventType.FIELD_UPDATED,
            details={**details, "repeat": True},
        )
        if same["status"] == LeadOfferStatus.COOLING:
            existing = lead_offer_transition(
                lead_offer=existing,
                to_status=LeadOfferStatus.REACTIVATION,
                reason="The lead submitted the form again.",
                extra_fields={"reactivation_count": F("reactivation_count") + 1},
            )
        return existing.pk

    duplicate_of = _duplicate_within_window(rows, route.tenant.duplicate_window_days)
    if duplicate_of:
        details["duplicate_of"] = str(duplicate_of)
    now = timezone.now()
    lead_offer_id = uuid.uuid4()
    with connection.cursor() as cursor:
        cursor.execute(
            _LEAD_OFFER_CREATE_SQL,
            {
                "id": lead_offer_id,
                "now": now,
                "lead_id": lead_id,
                "tenant_id": route.tenant_id,
                "offer_id": route.offer_id,
                "source_id": source_id,
                "status": LeadOfferStatus.TO_BE_CONTACTED
                if route.offer_id
                else LeadOfferStatus.PENDING_MAPPING,
                "qualification": Jsonb(_qualification_prefill(change, fields)),
                "billing": (
                    BillingEligibility.NOT_CHARGEABLE_DUPLICATE
                    if duplicate_of
                    else BillingEligibility.PENDING
                ),
                "billing_notes": (
                    f"Duplicate of lead offer {duplicate_of} inside the tenant's window."
                    if duplicate_of
                    else ""
                ),
                # Mapped leads are due for their first contact at once (v1 never scheduled it).
                "next_attempt_at": now if route.offer_id else None,
                "event_id": uuid.uuid4(),
                "details": Jsonb(details),
                "trace_id": current_trace_id(),
            },
        )
    return lead_offer_id


def _duplicate_within_window(rows: list[dict[str, Any]], window_days: int) -> uuid.UUID | None:
    """The tenant's earlier live lead_offer for the same person inside its window (is_duplicate_lead).

    Only rows with an offer count as the original: an unmapped PENDING_MAPPING row may itself end up
    as that same offer, and must not leave the person's only real row uncharged.
    """
    if not window_days:
        return None
    since = timezone.now() - timedelta(days=window_days)
    for row in rows:
        if (
            row["offer_id"] is not None
            and row["created_at"] >= since
            and row["status"] not in _DUPLICATE_IGNORES
        ):
            return row["pk"]
    return None


def _inbox_events_settle(settled: list[tuple[int, InboxEventOutcome | None]]) -> None:
    """Each event's status from its changes: from this run's outcome when it covered every change (the
    first pass), else from the table. One statement for all of them."""
    ids: list[int] = []
    statuses: list[str] = []
    errors: list[str] = []
    for event_id, outcome in settled:
        if outcome is not None:
            pending = outcome.counts.get(InboxChangeStatus.PENDING, 0)
            parked = sum(outcome.counts.get(status, 0) for status in InboxChangeStatus.parked())
        else:
            counts = InboxChange.objects.filter(event_id=event_id).aggregate(
                pending=Count("pk", filter=Q(status=InboxChangeStatus.PENDING)),
                parked=Count("pk", filter=Q(status__in=InboxChangeStatus.parked())),
            )
            pending, parked = counts["pending"], counts["parked"]
        if pending:
            status = InboxEventStatus.PENDING
        elif parked:
            status = InboxEventStatus.PARKED
        else:
            status = InboxEventStatus.DONE
        last_error = ""
        if pending or parked:
            last_error = (
                InboxChange.objects.filter(event_id=event_id)
                .exclude(last_error="")
                .order_by("-position")
                .values_list("last_error", flat=True)
                .first()
                or ""
            )
        ids.append(event_id)
        statuses.append(str(status))
        errors.append(last_error)
    if not ids:
        return
    with guarded("ingest.event.settle"), connection.cursor() as cursor:
        cursor.execute(_EVENTS_SETTLE_SQL, [ids, statuses, errors])


# --- Re-routing, reprocessing and the sweep ------------------------------------------------------------


def inbox_changes_requeue(changes: QuerySet[InboxChange] | Iterable[InboxChange | int]) -> int:
    """Put parked changes back to PENDING and defer their events' jobs (admin "reprocess", mapping).

    Takes changes, change ids, or a queryset of either. Runs in the caller's transaction, so the jobs
    exist only if the requeue commits. Returns how many changes were requeued.
    """
    selected = changes if isinstance(changes, QuerySet) else [getattr(c, "pk", c) for c in changes]
    with transaction.atomic():
        ids = list(
            InboxChange.objects.filter(pk__in=selected)
            .filter(status__in=InboxChangeStatus.parked())
            .values_list("pk", flat=True)
        )
        if not ids:
            return 0
        event_ids = set(InboxChange.objects.filter(pk__in=ids).values_list("event_id", flat=True).distinct())
        InboxChange.objects.filter(pk__in=ids).update(status=InboxChangeStatus.PENDING, processed_at=None)
        InboxEvent.objects.filter(pk__in=event_ids).update(status=InboxEventStatus.PENDING, processed_at=None)
        for event_id in sorted(event_ids):
            inbox_event_defer(event_id)
    return len(ids)


def inbox_requeue_unrouted_for_ad(ad_id: str) -> int:
    """An ad just got an active mapping: its parked, unrouted changes go through ingestion again."""
    return inbox_changes_requeue(
        InboxChange.objects.filter(ad_id=ad_id, status=InboxChangeStatus.UNROUTED).values_list(
            "pk", flat=True
        )
    )


def inbox_events_requeue(event_ids: Iterable[int]) -> int:
    """Admin "reprocess" on whole events: their parked changes, and the pending ones' lost jobs."""
    event_ids = list(event_ids)
    with transaction.atomic():
        requeued = inbox_changes_requeue(
            InboxChange.objects.filter(
                event_id__in=event_ids, status__in=InboxChangeStatus.parked()
            ).values_list("pk", flat=True)
        )
        for event_id in InboxEvent.objects.filter(
            pk__in=event_ids, status=InboxEventStatus.PENDING
        ).values_list("pk", flat=True):
            inbox_event_defer(event_id)
    return requeued


_STALE_UNCLAIMED_SQL = f"""
SELECT e.id FROM webhook_inbox_events e
WHERE {_CLAIMABLE_SQL} AND e.received_at < %(cutoff)s
ORDER BY e.received_at
LIMIT %(limit)s
"""


def inbox_stale_sweep(*, older_than_s: int | None = None, limit: int = 1000) -> int:
    """Wake drains for events still pending after `older_than_s` that no live job holds (a lost job
    must not mean a lost lead).

    An event claimed by a job still queued or running (a drain at work, the event's retry job waiting
    for its backoff) is that job's; a drain killed with its worker holds nothing once its worker's
    heartbeat is older than WORKER_STALLED_AFTER_S. One drain per shard of the stale events, joined
    when one is queued. Returns how many drain jobs were deferred.
    """
    older_than_s = settings.INBOX_STALE_AFTER_S if older_than_s is None else older_than_s
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    with connection.cursor() as cursor:
        cursor.execute(
            _STALE_UNCLAIMED_SQL,
            {"job_id": None, "stalled_s": settings.WORKER_STALLED_AFTER_S, "cutoff": cutoff, "limit": limit},
        )
        stale = [event_id for (event_id,) in cursor.fetchall()]
    deferred = 0
    for shard in sorted({drain_shard(event_id) for event_id in stale}):
        with transaction.atomic():
            deferred += inbox_drain_wake(shard)
    if stale:
        logger.warning(
            "inbox sweep found %d stale event(s), deferred %d drain(s)",
            len(stale),
            deferred,
            extra={"stale": len(stale), "deferred": deferred},
        )
    return deferred
