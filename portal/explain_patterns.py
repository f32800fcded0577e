"""The query patterns `manage.py explain_check` verifies (converzia/db/explain.py), in one place.

Each builder calls the real selector, the way its endpoint or job does, and picks the statement to
EXPLAIN from what the selector sent to PostgreSQL; so when a selector changes, the check follows.
Parameters are realistic values read from the database being checked (`Samples`): the tenant with
the most lead_offers, its most common status, its busiest offer, a keyset cursor from the middle of
its lead list, a real lead, ad and leadgen id.

The first five patterns are the rows of the performance guide's "Common Query Patterns" table; the
rest are the main query of each read endpoint and the two hot job paths (the delivery claim and the
webhook's routing look-up). Table sizes below which a missed index is a SKIP: `Expect.min_rows`,
default `--large-rows` (10,000).

This module lives in portal because portal composes every domain; `converzia.db.explain.patterns()`
finds it with `autodiscover_modules`, so converzia never imports portal.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.db.models import Count, Model, QuerySet
from django.test import RequestFactory
from rest_framework.request import Request

from billing.models import CreditLedger, CreditTransactionType
from converzia.api.pagination import KeysetPagination, cursor_after
from converzia.db.explain import (
    Captured,
    Expect,
    ExplainRun,
    QueryPattern,
    Skip,
    Statement,
    register,
    sql_has,
)
from converzia.db.prepared import PreparedQuery
from converzia.models import Tenant
from converzia.tenancy import scoped
from deliveries.services.dispatch import deliveries_claim
from leads import ingestion
from leads.models import AdOfferMap, InboxChange, LeadOffer, LeadOfferStatus, LeadSource
from portal.admin_stats import admin_stats_get
from portal.api import billing as billing_views
from portal.api import leads as lead_views
from portal.api import views as offer_views
from portal.queue import queue_depth_get
from portal.revenue import revenue_compute, revenue_default_range
from portal.stats import funnel_compute, lead_stats_compute
from portal.stats_view import stats_view_state, tenant_local_today

LeadFilters = lead_views.LeadFilters

LEAD_OFFERS, LEAD_EVENTS, LEAD_SOURCES = "lead_offers", "lead_events", "lead_sources"
DELIVERIES, CREDIT_LEDGER, OFFERS = "deliveries", "credit_ledger", "offers"
# Small tables whose index is validated from fewer rows than --large-rows: a few rows per tenant
# (offers, ad mappings: the planner uses the index from ~1,000 rows, seen at 850 on the bench), and
# one row per tenant (balances: a seq scan of 200 rows in 2 pages is still the planner's choice).
FEW_PER_TENANT_ROWS = 750
ONE_PER_TENANT_ROWS = 1_000


# --- sample values -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Samples:
    tenant: Tenant
    lead_offers: int  # the tenant's
    status: str  # the tenant's most common status
    offer_id: uuid.UUID | None  # its offer with the most lead_offers
    middle: dict[str, Any]  # the (updated_at, id) of the row half-way down its lead list
    search: str  # a real last name among its leads
    lead_offer_id: uuid.UUID  # a delivered lead_offer (it has a delivery and a timeline)
    lead_id: uuid.UUID
    leadgen_id: str | None
    ad_id: str | None  # an active mapped ad of the tenant
    today: dt.date  # in the tenant's zone


def samples(run: ExplainRun) -> Samples:
    return run.memo("samples", _samples_read)


def _samples_read() -> Samples:
    top = (
        LeadOffer.objects.order_by()
        .values("tenant_id")
        .annotate(n=Count("pk"))
        .order_by("-n", "tenant_id")
        .first()
    )
    if top is None:
        raise Skip("no lead_offers to sample parameters from: seed the database (manage.py seed_demo)")
    tenant = Tenant.objects.get(pk=top["tenant_id"])
    rows = scoped(LeadOffer, tenant)
    status = rows.order_by().values("status").annotate(n=Count("pk")).order_by("-n", "status")[0]["status"]
    busiest = (
        rows.filter(offer_id__isnull=False)
        .order_by()
        .values("offer_id")
        .annotate(n=Count("pk"))
        .order_by("-n", "offer_id")
        .first()
    )
    middle = rows.order_by("-updated_at", "-id").values(
        "updated_at", "id", "lead__last_name", "lead__first_name"
    )[top["n"] // 2]
    delivered = (
        rows.filter(status=LeadOfferStatus.SENT_TO_DEVELOPER)
        .values("id", "lead_id", "lead_source_id")
        .first()
        or rows.filter(pk=middle["id"]).values("id", "lead_id", "lead_source_id").get()
    )
    source = LeadSource.objects.filter(pk=delivered["lead_source_id"]).values("leadgen_id").first()
    ad_id = (
        AdOfferMap.objects.filter(tenant=tenant, is_active=True)
        .order_by("ad_id")
        .values_list("ad_id", flat=True)
        .first()
    )
    return Samples(
        tenant=tenant,
        lead_offers=top["n"],
        status=status,
        offer_id=busiest["offer_id"] if busiest else None,
        middle={"updated_at": middle["updated_at"], "id": middle["id"]},
        search=(middle["lead__last_name"] or middle["lead__first_name"] or "ana").strip(),
        lead_offer_id=delivered["id"],
        lead_id=delivered["lead_id"],
        leadgen_id=source["leadgen_id"] if source else None,
        ad_id=ad_id,
        today=tenant_local_today(tenant),
    )


# --- helpers -------------------------------------------------------------------------------------------
# Builders call what each view calls, looked up through the view's module (`lead_views.…`,
# `billing_views.…`, `offer_views.…`), so a selector that moves or is renamed is followed.


def _paginator_request(
    model: type[Model], ordering: Sequence[str], after: dict[str, Any] | None
) -> tuple[KeysetPagination, Request, SimpleNamespace]:
    paginator = KeysetPagination()
    params = {}
    if after is not None:
        # The cursor a client would hold after reading `after`.
        params[paginator.cursor_query_param] = cursor_after(model, ordering, after)
    return (
        paginator,
        Request(RequestFactory().get("/", params)),
        SimpleNamespace(keyset_ordering=tuple(ordering)),
    )


def _page(
    queryset: QuerySet[Any], *, ordering: Sequence[str], after: dict[str, Any] | None = None
) -> list[Any]:
    """One page through the API's paginator, as the view's `paginate_queryset` does; `after` is the row
    whose `next` cursor the request carries."""
    paginator, request, view = _paginator_request(queryset.model, ordering, after)
    return paginator.paginate_queryset(queryset, request, view)


def _prepared_page(
    query: PreparedQuery,
    model: type[Model],
    *,
    ordering: Sequence[str],
    after: dict[str, Any] | None = None,
    **arguments: Any,
) -> list[Any]:
    """The same, for a prepared query, as the view's `paginate_prepared` does."""
    paginator, request, view = _paginator_request(model, ordering, after)
    return paginator.paginate_prepared(query, model, request, view, **arguments)


def _pick(key: str, call: Callable[[ExplainRun, Samples], Any], match: Callable[[str], bool], **kwargs: Any):
    """A builder: run `call` once per check run (memoised under `key`) and pick the matching statement."""

    def build(run: ExplainRun) -> Statement:
        sample = samples(run)
        captured: Captured = run.captured(key, lambda: call(run, sample), **kwargs)
        return captured.pick(match)

    return build


def _pattern(
    name: str,
    description: str,
    expect: Sequence[Expect],
    build: Callable[[ExplainRun], Statement],
    *,
    known_issue: str | None = None,
) -> None:
    register(
        QueryPattern(
            name=name, description=description, expect=tuple(expect), build=build, known_issue=known_issue
        )
    )


def _lead_list(filters: Callable[[Samples], LeadFilters], *, after_middle: bool = False):
    def call(run: ExplainRun, s: Samples) -> None:
        ordering = lead_views.LeadViewSet.keyset_ordering
        after = s.middle if after_middle else None
        lead_views.portal_lead_page(
            tenant=s.tenant,
            filters=filters(s),
            can_view_details=True,
            paginate=lambda qs: _page(qs, ordering=ordering, after=after),
            paginate_prepared=lambda query, model, **arguments: _prepared_page(
                query, model, ordering=ordering, after=after, **arguments
            ),
        )

    return call


def _ledger_page(s: Samples, types: list[str] | None) -> list[Any]:
    return _prepared_page(
        billing_views.LEDGER_PAGE,
        CreditLedger,
        ordering=billing_views.BillingLedgerViewSet.keyset_ordering,
        tenant_id=s.tenant.pk,
        transaction_types=types,
    )


LIST_PAGE = sql_has(f'FROM "{LEAD_OFFERS}"', "LIMIT")
TENANT_UPDATED = "idx_lead_offers_tenant_updated"
TENANT_STATUS_UPDATED = "idx_lead_offers_tenant_status_updated"
TENANT_STATUS_OFFER = "idx_lead_offers_tenant_status_offer"
TENANT_CREATED = "idx_lead_offers_tenant_created"  # (tenant_id, created_at) INCLUDE (status, offer_id)
TENANT_DISQUALIFIED = "idx_lead_offers_tenant_disqualified"
# Any index that starts at the tenant: for reads that filter on a column no index orders.
TENANT_LEADING = (TENANT_STATUS_OFFER, TENANT_UPDATED, TENANT_STATUS_UPDATED, TENANT_CREATED)


# --- the performance guide's "Common Query Patterns" ---------------------------------------------------

_pattern(
    "guide.lead_offers_tenant_status",
    "lead_offers WHERE tenant_id AND status: the portal lead list filtered by a status, first page",
    [Expect(LEAD_OFFERS, (TENANT_STATUS_UPDATED,))],
    _pick("leads.status", _lead_list(lambda s: LeadFilters(statuses=[s.status])), LIST_PAGE),
)
_pattern(
    "guide.credit_ledger_tenant",
    "credit_ledger WHERE tenant_id (by type): the portal ledger filtered to purchases, first page",
    [Expect(CREDIT_LEDGER, ("idx_credit_ledger_tenant_type_created",))],
    _pick(
        "ledger.purchases",
        lambda run, s: _ledger_page(s, [CreditTransactionType.CREDIT_PURCHASE]),
        sql_has(f'FROM "{CREDIT_LEDGER}"', "LIMIT"),
    ),
)
_pattern(
    "guide.deliveries_status",
    "deliveries WHERE status: the admin queue's failed and dead-letter deliveries (GET /api/admin/queue)",
    [Expect(DELIVERIES, ("idx_deliveries_status_created",))],
    _pick(
        "queue",
        lambda run, s: queue_depth_get(),
        sql_has(
            f'FROM "{DELIVERIES}"',
            "GROUP BY",
            without=['"next_attempt_at"', '"blocked_reason"', '"claimed_until"'],
        ),
    ),
)


def _ingested(run: ExplainRun, s: Samples) -> None:
    if not (s.ad_id and s.leadgen_id):
        raise Skip("the sampled tenant has no active ad mapping or no leadgen_id to look up")
    change = InboxChange(ad_id=s.ad_id, leadgen_id=s.leadgen_id)
    # The webhook job's replay check for one change (leads.ingestion.inbox_event_process).
    ingestion._already_ingested([change], ingestion._active_routes([s.ad_id]))


_pattern(
    "guide.lead_sources_leadgen",
    "lead_sources WHERE leadgen_id: ingestion's replay check (has this tenant stored the leadgen id?)",
    [Expect(LEAD_SOURCES, ("idx_lead_sources_leadgen_id", "idx_lead_sources_unique_tenant_leadgen"))],
    _pick("ingestion", _ingested, sql_has(f'FROM "{LEAD_SOURCES}"')),
)
_pattern(
    "guide.ad_offer_map_ad",
    "ad_offer_map WHERE ad_id: the webhook's routing look-up (the active mapping of an ad)",
    [Expect("ad_offer_map", ("idx_ad_offer_map_ad_id",), min_rows=FEW_PER_TENANT_ROWS)],
    _pick("ingestion", _ingested, sql_has('FROM "ad_offer_map"')),
)


# --- portal: leads list (one pattern per filter family) and detail --------------------------------------

_pattern(
    "portal.leads.list",
    "GET /api/portal/leads: newest activity first, no filter, first page",
    [Expect(LEAD_OFFERS, (TENANT_UPDATED,))],
    _pick("leads.all", _lead_list(lambda s: LeadFilters()), LIST_PAGE),
)
_pattern(
    "portal.leads.list.cursor",
    "GET /api/portal/leads?cursor=…: a page from the middle of the tenant's list (keyset)",
    [Expect(LEAD_OFFERS, (TENANT_UPDATED,))],
    _pick("leads.cursor", _lead_list(lambda s: LeadFilters(), after_middle=True), LIST_PAGE),
)
_pattern(
    "portal.leads.list.status_cursor",
    "GET /api/portal/leads?status=…&cursor=…: a status filter, from the middle of the list",
    [Expect(LEAD_OFFERS, (TENANT_STATUS_UPDATED, TENANT_UPDATED))],
    _pick(
        "leads.status.cursor",
        _lead_list(lambda s: LeadFilters(statuses=[s.status]), after_middle=True),
        LIST_PAGE,
    ),
)
_pattern(
    "portal.leads.list.stage",
    "GET /api/portal/leads?stage=in_chat: four statuses, newest activity first",
    [Expect(LEAD_OFFERS, (TENANT_STATUS_UPDATED, TENANT_UPDATED))],
    _pick("leads.stage", _lead_list(lambda s: LeadFilters(stage="in_chat")), LIST_PAGE),
)
_pattern(
    "portal.leads.list.offer",
    "GET /api/portal/leads?offer_id=…: the tenant's busiest offer",
    [Expect(LEAD_OFFERS, (TENANT_UPDATED, TENANT_STATUS_OFFER, "idx_lead_offers_offer"))],
    _pick("leads.offer", _lead_list(lambda s: LeadFilters(offer_id=s.offer_id)), LIST_PAGE),
)
_pattern(
    "portal.leads.list.created",
    "GET /api/portal/leads?created_from=…&created_to=…: the last 7 local days",
    # No index has created_at after tenant_id: the planner walks the list order and filters (a big
    # tenant), or reads a small tenant's rows by another tenant-led index and sorts them.
    [Expect(LEAD_OFFERS, TENANT_LEADING)],
    _pick(
        "leads.created",
        _lead_list(lambda s: LeadFilters(created_from=s.today - dt.timedelta(days=6), created_to=s.today)),
        LIST_PAGE,
    ),
)
_pattern(
    "portal.leads.search.leads",
    "GET /api/portal/leads?q=<a last name>: the leads matching `q`, from the trigram index",
    [Expect("leads", ("idx_leads_search_trgm",))],
    _pick(
        "leads.search",
        _lead_list(lambda s: LeadFilters(q=s.search)),
        sql_has('FROM "leads"', "lead_search_text"),
    ),
)
_pattern(
    "portal.leads.list.search",
    "GET /api/portal/leads?q=<a last name>: the page among the matching leads' lead_offers",
    # Few matches: probes by lead_id (the unique index leads with it); many: the tenant's newest rows.
    [Expect(LEAD_OFFERS, ("lead_offers_lead_offer_tenant_uniq", TENANT_UPDATED))],
    _pick("leads.search", _lead_list(lambda s: LeadFilters(q=s.search)), LIST_PAGE),
)


def _detail(run: ExplainRun, s: Samples) -> None:
    lead_views.portal_lead_detail(tenant=s.tenant, lead_offer_id=s.lead_offer_id, can_view_details=True)


_pattern(
    "portal.leads.detail",
    "GET /api/portal/leads/{id}: the lead_offer with its lead, offer, source and delivery",
    [Expect(LEAD_OFFERS, ("lead_offers_pkey",))],
    _pick("detail", _detail, sql_has(f'FROM "{LEAD_OFFERS}"')),
)
_pattern(
    "portal.leads.detail.timeline",
    "GET /api/portal/leads/{id}: its latest 200 events",
    [Expect(LEAD_EVENTS, ("idx_lead_events_lead_offer_created",))],
    _pick("detail", _detail, sql_has(f'FROM "{LEAD_EVENTS}"')),
)


# --- portal: stats, funnel, offers -----------------------------------------------------------------------


def _stats(run: ExplainRun, s: Samples) -> None:
    lead_stats_compute(tenant=s.tenant)


LEAD_OFFER_COUNTS, LEAD_OFFER_COUNT_DELTAS = "lead_offer_counts", "lead_offer_count_deltas"
# Every live number but the trend is one statement (portal.stats._LIVE_SQL): each pattern below checks
# the plan of its own table in it.
STATS_LIVE = sql_has(f"FROM {LEAD_OFFER_COUNTS} ", f"FROM {LEAD_OFFER_COUNT_DELTAS} ")
_pattern(
    "portal.stats.counts",
    "GET /api/portal/leads/stats: the tenant's maintained counts by status and DISQUALIFIED category",
    # ~20 rows per tenant. Its pending deltas (UNION ALL) are few between compactions, so the planner
    # rightly seq-scans them; a backlog past --seq-scan-fail-rows still fails the pattern.
    [Expect(LEAD_OFFER_COUNTS, ("lead_offer_counts_pkey",), min_rows=FEW_PER_TENANT_ROWS)],
    _pick("stats", _stats, STATS_LIVE),
)
_pattern(
    "portal.stats.created",
    "GET /api/portal/leads/stats: lead_offers created today / in 7 / in 30 local days",
    [Expect(LEAD_OFFERS, (TENANT_CREATED,), index_only=True)],
    _pick("stats", _stats, STATS_LIVE),
)
_pattern(
    "portal.stats.delivered",
    "GET /api/portal/leads/stats: deliveries completed today / 7d / 30d (DELIVERY_COMPLETED events)",
    [Expect(LEAD_EVENTS, ("idx_lead_events_tenant_type_created",), index_only=True)],
    _pick("stats", _stats, STATS_LIVE),
)
_pattern(
    "portal.stats.active_offers",
    "GET /api/portal/leads/stats: the tenant's active offers (count)",
    [Expect(OFFERS, ("offers_tenant_slug_uniq",), min_rows=FEW_PER_TENANT_ROWS)],
    _pick("stats", _stats, STATS_LIVE),
)


def _trend_statement(run: ExplainRun) -> Statement:
    if not stats_view_state().populated:
        raise Skip("tenant_stats_materialized was never refreshed (manage.py refresh_stats)")
    sample = samples(run)
    return run.captured("stats", lambda: _stats(run, sample)).pick(
        sql_has('FROM "tenant_stats_materialized"')
    )


_pattern(
    "portal.stats.trend",
    "GET /api/portal/leads/stats: the 30-day trend from the materialized view",
    [Expect("tenant_stats_materialized", ("idx_tenant_stats_materialized_tenant_day",))],
    _trend_statement,
)


def _funnel(**params: Any) -> Callable[[ExplainRun, Samples], Any]:
    def call(run: ExplainRun, s: Samples) -> None:
        values = {name: value(s) for name, value in params.items()}
        funnel_compute(tenant=s.tenant, **values)

    return call


FUNNEL_GROUPS = sql_has(f'FROM "{LEAD_OFFERS}"', "GROUP BY")
_pattern(
    "portal.funnel",
    "GET /api/portal/funnel: stage counts per offer, the whole tenant (index-only)",
    [Expect(LEAD_OFFERS, (TENANT_STATUS_OFFER,), index_only=True)],
    _pick("funnel", _funnel(), FUNNEL_GROUPS),
)
_pattern(
    "portal.funnel.offer",
    "GET /api/portal/funnel?offer_id=…: the busiest offer",
    [Expect(LEAD_OFFERS, (TENANT_STATUS_OFFER, "idx_lead_offers_offer"))],
    _pick("funnel.offer", _funnel(offer_id=lambda s: s.offer_id), FUNNEL_GROUPS),
)
_pattern(
    "portal.funnel.created",
    "GET /api/portal/funnel?created_from=…&created_to=…: the last 30 local days (index-only)",
    [Expect(LEAD_OFFERS, (TENANT_CREATED,), index_only=True)],
    _pick(
        "funnel.created",
        _funnel(created_from=lambda s: s.today - dt.timedelta(days=29), created_to=lambda s: s.today),
        FUNNEL_GROUPS,
    ),
)


def _offers(run: ExplainRun, s: Samples) -> None:
    # What OfferViewSet.list runs, looked up through its module. The page's funnel counts come from
    # the funnel's cached read (`offers_with_funnels` → `funnel_get`): portal.funnel checks that query.
    queryset = offer_views.offer_list_for_tenant(tenant=s.tenant)
    _page(queryset, ordering=offer_views.OfferViewSet.keyset_ordering)


_pattern(
    "portal.offers.list",
    "GET /api/portal/offers: the tenant's offers, first page",
    [Expect(OFFERS, ("offers_tenant_slug_uniq",), min_rows=FEW_PER_TENANT_ROWS)],
    _pick("offers", _offers, sql_has(f'FROM "{OFFERS}"', "LIMIT")),
)


# --- portal: billing -------------------------------------------------------------------------------------

_pattern(
    "portal.billing.ledger",
    "GET /api/portal/billing/ledger: newest first, any type, first page",
    [Expect(CREDIT_LEDGER, ("idx_credit_ledger_tenant_created",))],
    _pick(
        "ledger.all",
        lambda run, s: _ledger_page(s, None),
        sql_has(f'FROM "{CREDIT_LEDGER}"', "LIMIT"),
    ),
)
_pattern(
    "portal.billing.balance",
    "GET /api/portal/billing/balance: the balance row (primary key)",
    [Expect("tenant_credit_balances", ("tenant_credit_balances_pkey",), min_rows=ONE_PER_TENANT_ROWS)],
    _pick(
        "balance",
        lambda run, s: billing_views.balance_summary_get(tenant=s.tenant),
        sql_has('FROM "tenant_credit_balances"'),
    ),
)


# --- admin queue ------------------------------------------------------------------------------------------

_pattern(
    "admin.queue.inbox_pending",
    "GET /api/admin/queue: pending inbox events and the oldest one",
    [Expect("webhook_inbox_events", ("idx_inbox_events_pending",))],
    _pick("queue", lambda run, s: queue_depth_get(), sql_has('FROM "webhook_inbox_events"')),
)
_pattern(
    "admin.queue.parked",
    "GET /api/admin/queue: parked inbox changes (UNROUTED, FAILED) by status",
    [Expect("webhook_inbox_changes", ("idx_inbox_changes_parked",))],
    _pick("queue", lambda run, s: queue_depth_get(), sql_has('FROM "webhook_inbox_changes"')),
)
_pattern(
    "admin.queue.due",
    "GET /api/admin/queue: deliveries due now and the oldest due time",
    [Expect(DELIVERIES, ("idx_deliveries_due",))],
    _pick("queue", lambda run, s: queue_depth_get(), sql_has(f'FROM "{DELIVERIES}"', '"next_attempt_at" <=')),
)


# --- jobs: the delivery claim and ingestion ---------------------------------------------------------------

CLAIM = sql_has(f'FROM "{DELIVERIES}"', "SKIP LOCKED")
_pattern(
    "deliveries.claim",
    "the dispatcher's claim: due deliveries FOR NO KEY UPDATE SKIP LOCKED, oldest due first",
    [Expect(DELIVERIES, ("idx_deliveries_due",))],
    # Stopped at the claim itself: the statements after it write (all rolled back anyway).
    _pick(
        "claim",
        lambda run, s: deliveries_claim(limit=settings.DELIVERY_BATCH_SIZE),
        CLAIM,
        stop_at=CLAIM,
    ),
)


def _person_rows(run: ExplainRun) -> Statement:
    sample = samples(run)
    # Run as a constant by leads.ingestion._lead_offer_attach: this is its exact text and parameters.
    return Statement(sql=ingestion._PERSON_ROWS_SQL, params=(sample.lead_id, sample.tenant.pk))


_pattern(
    "ingestion.person_rows",
    "ingestion: the tenant's existing lead_offers of one person (lead_id, tenant_id)",
    [Expect(LEAD_OFFERS, ("lead_offers_lead_offer_tenant_uniq",))],
    _person_rows,
)


# --- admin: revenue and the dashboard ---------------------------------------------------------------------


def _revenue(*, tenant: bool) -> Callable[[ExplainRun, Samples], Any]:
    def call(run: ExplainRun, s: Samples) -> None:
        start, end = revenue_default_range()
        revenue_compute(date_start=start, date_end=end, tenant_id=s.tenant.pk if tenant else None)

    return call


REVENUE = sql_has("WITH costs AS", "FROM platform_costs")
PLATFORM_COSTS = "platform_costs"
_pattern(
    "admin.revenue",
    "GET /api/admin/revenue: the last 30 UTC days, all tenants (one statement, each source read once)",
    [
        Expect(LEAD_OFFERS, ("idx_lead_offers_qualified_at",), index_only=True),
        Expect(DELIVERIES, ("idx_deliveries_delivered_at",), index_only=True),
        Expect(CREDIT_LEDGER, ("idx_credit_ledger_charges_created",), index_only=True),
        # Only the periods that end after the range starts, not every period ever synced.
        Expect(PLATFORM_COSTS, ("idx_platform_costs_date_end",), index_only=True),
    ],
    _pick("revenue", _revenue(tenant=False), REVENUE),
)
_pattern(
    "admin.revenue.tenant",
    "GET /api/admin/revenue?tenant_id=…: the last 30 UTC days of the biggest tenant",
    [
        Expect(LEAD_OFFERS, ("idx_lead_offers_qualified_at", *TENANT_LEADING)),
        Expect(DELIVERIES, ("idx_deliveries_delivered_at", "idx_deliveries_tenant_status_created")),
        Expect(
            CREDIT_LEDGER,
            (
                "idx_credit_ledger_charges_created",
                "idx_credit_ledger_tenant_type_created",
                "idx_credit_ledger_tenant_created",
            ),
        ),
        Expect(PLATFORM_COSTS, ("idx_platform_costs_date_end", "platform_costs_period_uniq")),
    ],
    _pick("revenue.tenant", _revenue(tenant=True), REVENUE),
)


def _admin_stats(run: ExplainRun, s: Samples) -> None:
    admin_stats_get()


_pattern(
    "admin.stats.counters",
    "GET /api/admin/stats: every counter in one statement (PENDING_MAPPING leads per tenant, "
    "unrouted inbox changes, low balances, today from the view)",
    [
        Expect(LEAD_OFFERS, (TENANT_STATUS_UPDATED, TENANT_STATUS_OFFER)),
        Expect("webhook_inbox_changes", ("idx_inbox_changes_parked",)),
    ],
    _pick("admin.stats", _admin_stats, sql_has("WITH tenant_today AS")),
)
_pattern(
    "admin.stats.trend",
    "GET /api/admin/stats: the 30-day trend of all tenants from the materialized view",
    [Expect("tenant_stats_materialized", ("idx_tenant_stats_materialized_day",))],
    _pick("admin.stats", _admin_stats, sql_has('FROM "tenant_stats_materialized"')),
)
