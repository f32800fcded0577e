"""`revenue_compute` against a straightforward re-computation, on a seeded dataset and on drawn ones.

The reference walks every row in Python with exact fractions (a cost's spend split over the days of its
period, day by day), then rounds once, half up, to cents: nothing shared with the SQL but the
definitions in `portal.revenue`'s docstring. A few hand-made rows add what the seed lacks: a tenant
without a pricing row (the model default price), a ready lead without an offer, spend without an offer
and periods that straddle the range's edges.

The seed's periods depend on the day it runs (the current month's period ends today), so fixed ranges
over it only checked the period lengths of the day the suite ran: issue 14's one-cent mismatch showed
only on 2026-12-06. Hypothesis therefore sweeps ranges over the seed, and dates, periods, spends and
ranges over small drawn datasets.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import math
import uuid
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import orjson
import pytest
from django.core.management import call_command
from django.db import transaction
from django.db.models import Count
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing.models import (
    BillingOrder,
    BillingOrderStatus,
    CreditLedger,
    CreditTransactionType,
    PlatformCost,
    TenantCreditBalance,
    TenantPricing,
)
from billing.tests.factories import PlatformCostFactory
from converzia.models import Tenant
from converzia.tests.factories import TenantFactory
from deliveries.models import Delivery
from leads.models import LeadOffer, LeadOfferStatus, Offer
from leads.tests.factories import LeadOfferFactory, OfferFactory
from portal.api.admin import AdminRevenueView, RevenueFiguresSerializer, revenue_body, revenue_money
from portal.revenue import (
    REVENUE_DATE_MAX,
    REVENUE_DATE_MIN,
    REVENUE_DAYS_MAX,
    RevenueDay,
    RevenueFigures,
    RevenueOffer,
    RevenueReport,
    RevenueTenant,
    revenue_compute,
    revenue_default_range,
)

pytestmark = pytest.mark.django_db

CENT = Decimal("0.01")


def _cents(value: Fraction | Decimal) -> Decimal:
    """Rounded half up to cents (every amount here is non-negative)."""
    if isinstance(value, Fraction):
        return Decimal(math.floor(value * 100 + Fraction(1, 2))).scaleb(-2)
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def _utc_day(instant: dt.datetime) -> dt.date:
    return instant.astimezone(dt.UTC).date()


class _Sums:
    """One line of figures, summed exactly."""

    def __init__(self) -> None:
        self.ready = self.delivered = self.consumed = self.refunded = 0
        self.ready_value = self.delivered_value = self.payments = Decimal(0)
        self.spend = Fraction(0)

    def figures(self) -> RevenueFigures:
        ready_value, spend = _cents(self.ready_value), _cents(self.spend)
        profit = ready_value - spend
        return RevenueFigures(
            leads_ready_count=self.ready,
            leads_ready_value=ready_value,
            leads_delivered_count=self.delivered,
            leads_delivered_value=_cents(self.delivered_value),
            payments_received=_cents(self.payments),
            credits_consumed=self.consumed,
            credits_refunded=self.refunded,
            attributed_spend=spend,
            profit=profit,
            margin_pct=None if ready_value == 0 else round(float(profit / ready_value * 100), 2),
        )


def reference(start: dt.date, end: dt.date, tenant_id: uuid.UUID | None = None) -> RevenueReport:
    default_price = TenantPricing._meta.get_field("cost_per_lead").get_default()
    prices = dict(TenantPricing.objects.values_list("tenant_id", "cost_per_lead"))
    tenant_names = dict(Tenant.objects.values_list("id", "name"))
    offer_names = dict(Offer.objects.values_list("id", "name"))
    balances = dict(TenantCreditBalance.objects.values_list("tenant_id", "balance"))
    start_at = dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC)
    end_at = dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    mine = (lambda t: True) if tenant_id is None else (lambda t: t == tenant_id)

    summary, days = _Sums(), defaultdict(_Sums)
    tenants: dict[uuid.UUID, _Sums] = defaultdict(_Sums)
    offers: dict[tuple[uuid.UUID, uuid.UUID], _Sums] = defaultdict(_Sums)

    def lines(tenant: uuid.UUID, offer: uuid.UUID | None, day: dt.date | None) -> list[_Sums]:
        found = [summary, tenants[tenant]]
        if offer is not None:
            found.append(offers[(tenant, offer)])
        if day is not None:
            found.append(days[day])
        return found

    for tenant, offer, at in LeadOffer.objects.filter(qualified_at__isnull=False).values_list(
        "tenant_id", "offer_id", "qualified_at"
    ):
        if mine(tenant) and start_at <= at < end_at:
            for line in lines(tenant, offer, _utc_day(at)):
                line.ready += 1
                line.ready_value += prices.get(tenant, default_price)
    for tenant, offer, at in Delivery.objects.filter(delivered_at__isnull=False).values_list(
        "tenant_id", "offer_id", "delivered_at"
    ):
        if mine(tenant) and start_at <= at < end_at:
            for line in lines(tenant, offer, _utc_day(at)):
                line.delivered += 1
                line.delivered_value += prices.get(tenant, default_price)
    for tenant, total, at in BillingOrder.objects.filter(status=BillingOrderStatus.COMPLETED).values_list(
        "tenant_id", "total", "paid_at"
    ):
        if mine(tenant) and at is not None and start_at <= at < end_at:
            for line in lines(tenant, None, _utc_day(at)):
                line.payments += total
    charges = (CreditTransactionType.CREDIT_CONSUMPTION, CreditTransactionType.CREDIT_REFUND)
    for tenant, kind, amount, at in CreditLedger.objects.filter(transaction_type__in=charges).values_list(
        "tenant_id", "transaction_type", "amount", "created_at"
    ):
        if mine(tenant) and start_at <= at < end_at:
            for line in lines(tenant, None, _utc_day(at)):
                if kind == CreditTransactionType.CREDIT_CONSUMPTION:
                    line.consumed -= amount
                else:
                    line.refunded += amount
    for tenant, offer, spend, first, last in PlatformCost.objects.values_list(
        "tenant_id", "offer_id", "spend", "date_start", "date_end"
    ):
        if not mine(tenant) or last < start or first > end:
            continue
        per_day = Fraction(spend) / ((last - first).days + 1)
        lines(tenant, offer, None)  # an overlapping period lists its tenant and offer, even at 0.00
        day = max(first, start)
        while day <= min(last, end):
            for line in lines(tenant, offer, day):
                line.spend += per_day
            day += dt.timedelta(days=1)

    by_tenant = []
    for tenant, sums in tenants.items():
        figures = sums.figures()
        by_tenant.append(
            RevenueTenant(
                tenant_id=tenant,
                name=tenant_names[tenant],
                cost_per_lead=_cents(prices.get(tenant, default_price)),
                pending_credits=balances.get(tenant, 0),
                cpl_attributed=(
                    _cents(figures.attributed_spend / figures.leads_ready_count)
                    if figures.leads_ready_count
                    else None
                ),
                figures=figures,
            )
        )
    by_offer = [
        RevenueOffer(offer, offer_names[offer], tenant, tenant_names[tenant], sums.figures())
        for (tenant, offer), sums in offers.items()
    ]
    by_tenant.sort(
        key=lambda t: (-t.figures.leads_ready_value, -t.figures.leads_delivered_value, str(t.tenant_id))
    )
    by_offer.sort(
        key=lambda o: (-o.figures.leads_ready_value, -o.figures.leads_delivered_value, str(o.offer_id))
    )
    span = (end - start).days + 1
    return RevenueReport(
        date_start=start,
        date_end=end,
        tenant_id=tenant_id,
        summary=summary.figures(),
        pending_credits=sum(b for t, b in balances.items() if mine(t)),
        by_day=[
            RevenueDay(day, days[day].figures())
            for day in (start + dt.timedelta(days=offset) for offset in range(span))
        ],
        by_tenant=by_tenant,
        by_offer=by_offer,
    )


@pytest.fixture
def seeded():
    call_command(
        "seed_demo",
        *("--tenants", "6", "--leads", "3000", "--whale", "800", "--seed", "11", "--months", "4"),
        "--no-progress",
        "--json",
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    today = revenue_default_range()[1]
    # What the seed lacks: a tenant without pricing, a ready lead without an offer, spend without an
    # offer, periods straddling the default range's edges, and an odd spend split over 7 days.
    bare = TenantFactory(name="Sin precio")
    offer = OfferFactory(tenant=bare, name="Sin precio uno")
    for hours in (2, 30, 24 * 12):
        ready = LeadOfferFactory(offer=offer, status=LeadOfferStatus.LEAD_READY)
        LeadOffer.objects.filter(pk=ready.pk).update(
            qualified_at=dt.datetime.combine(today, dt.time.min, tzinfo=dt.UTC) - dt.timedelta(hours=hours)
        )
    # Ready once, its offer since unmapped.
    unmapped = LeadOfferFactory(offer=None, tenant=bare, status=LeadOfferStatus.PENDING_MAPPING)
    LeadOffer.objects.filter(pk=unmapped.pk).update(
        qualified_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    )
    PlatformCostFactory(
        tenant=bare, offer=None, spend=Decimal("100.01"), date_start=today - dt.timedelta(days=40),
        date_end=today - dt.timedelta(days=27),
    )  # fmt: skip
    PlatformCostFactory(
        tenant=bare, offer=offer, spend=Decimal("33.33"), date_start=today - dt.timedelta(days=3),
        date_end=today + dt.timedelta(days=3),
    )  # fmt: skip
    return bare


def _ranges() -> list[tuple[dt.date, dt.date]]:
    start, end = revenue_default_range()
    return [
        (start, end),
        (end, end),
        (end - dt.timedelta(days=365), end),
        (end - dt.timedelta(days=75), end - dt.timedelta(days=44)),
        (end + dt.timedelta(days=1), end + dt.timedelta(days=9)),
    ]


def test_seeded_dataset_has_every_kind_of_fact(seeded):
    start, end = revenue_default_range()
    report = revenue_compute(date_start=start, date_end=end)
    summary = report.summary
    assert (
        min(
            summary.leads_ready_count,
            summary.leads_delivered_count,
            summary.credits_consumed,
            summary.payments_received,
            summary.attributed_spend,
        )
        > 0
    )
    assert len(report.by_tenant) >= 2 and len(report.by_offer) >= 2


@pytest.mark.parametrize("which", range(5))
def test_all_tenants_match_the_reference(seeded, which):
    start, end = _ranges()[which]

    computed = revenue_compute(date_start=start, date_end=end)

    # repr: the same values, types and Decimal scales (2 places), not just equal numbers.
    assert repr(dataclasses.asdict(computed)) == repr(dataclasses.asdict(reference(start, end)))


def _assert_matches_the_reference(start: dt.date, end: dt.date, tenant_id: uuid.UUID | None) -> None:
    computed = revenue_compute(date_start=start, date_end=end, tenant_id=tenant_id)
    expected = reference(start, end, tenant_id)
    # repr: the same values, types and Decimal scales (2 places), not just equal numbers.
    assert repr(dataclasses.asdict(computed)) == repr(dataclasses.asdict(expected)), (start, end, tenant_id)


# Bounded so the whole module stays within seconds; no example database, so a run never replays another.
_SWEEP = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_SWEEP
@given(
    start_offset=st.integers(min_value=-160, max_value=10),
    days=st.one_of(
        st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=REVENUE_DAYS_MAX)
    ),
    whole_platform=st.booleans(),
)
def check_seeded_ranges(
    start_offset: int, days: int, whole_platform: bool, today: dt.date, tenant_id: uuid.UUID
) -> None:
    start = today + dt.timedelta(days=start_offset)
    _assert_matches_the_reference(
        start, start + dt.timedelta(days=days - 1), None if whole_platform else tenant_id
    )


def test_any_range_over_the_seed_matches_the_reference(seeded):
    # Ranges from before the seed's first month to past today, of any allowed length.
    check_seeded_ranges(today=revenue_default_range()[1], tenant_id=seeded.pk)


def test_one_tenant_matches_the_reference(seeded):
    start, end = revenue_default_range()
    biggest = (
        LeadOffer.objects.values("tenant_id").annotate(n=Count("pk")).order_by("-n").first()["tenant_id"]
    )
    for tenant_id in (biggest, seeded.pk):
        computed = revenue_compute(date_start=start, date_end=end, tenant_id=tenant_id)
        assert repr(dataclasses.asdict(computed)) == repr(
            dataclasses.asdict(reference(start, end, tenant_id))
        )


def _serialized(report: RevenueReport) -> dict:
    """The documented shape: the view's OutputSerializer, as the body was rendered before."""
    body = {
        "date_range": {"start": report.date_start, "end": report.date_end},
        "tenant_id": report.tenant_id,
        "summary": {**dataclasses.asdict(report.summary), "pending_credits": report.pending_credits},
        "by_day": [{"date": day.day, **dataclasses.asdict(day.figures)} for day in report.by_day],
        "by_tenant": [
            {**dataclasses.asdict(row), **dataclasses.asdict(row.figures)} for row in report.by_tenant
        ],
        "by_offer": [
            {**dataclasses.asdict(row), **dataclasses.asdict(row.figures)} for row in report.by_offer
        ],
        "as_of": None,
        "cached": False,
    }
    rendered = dict(AdminRevenueView.OutputSerializer(body).data)
    del rendered["as_of"], rendered["cached"]
    return orjson.loads(orjson.dumps(rendered, default=str))


@pytest.mark.parametrize("which", range(5))
def test_the_direct_body_is_what_the_documented_serializer_renders(seeded, which):
    start, end = _ranges()[which]
    for tenant_id in (None, seeded.pk):
        report = revenue_compute(date_start=start, date_end=end, tenant_id=tenant_id)

        body = revenue_body(report)

        # Byte for byte, key order included: the cache stores this body and ETags hash it.
        assert orjson.dumps(body) == orjson.dumps(_serialized(report))


def test_money_renders_like_the_decimal_field_at_every_edge():
    field = RevenueFiguresSerializer().fields["attributed_spend"]
    for raw in ("0", "0.005", "0.015", "2.675", "-1.005", "12345678901234.99", "7.1", "1E+2", "3.14159"):
        value = Decimal(raw)
        assert revenue_money(value) == field.to_representation(value), raw
    assert revenue_money(None) is None


# --- drawn datasets: any date, period, spend and range ---------------------------------------------


@pytest.fixture
def small_world():
    """Two tenants, three offers and one ready lead per offer; the examples date them and add spend."""
    first, second = TenantFactory(name="Uno"), TenantFactory(name="Dos")
    offers = [
        OfferFactory(tenant=first, name="Uno a"),
        OfferFactory(tenant=first, name="Uno b"),
        OfferFactory(tenant=second, name="Dos a"),
    ]
    leads = [LeadOfferFactory(offer=offer, status=LeadOfferStatus.LEAD_READY) for offer in offers]
    return first, offers, leads


# Synced spend comes as several ads sharing a period (the seed: one row per ad and month), so a period
# is drawn with its ads: its first day relative to the example's anchor date, its length, its owner (an
# offer, or 3: the first tenant, no offer) and each ad's spend in cents. Short periods and small spends
# are where repeating quotients meet half cents; long ones straddle both edges of a range.
@st.composite
def _periods(draw: st.DrawFn) -> tuple[int, int, int, list[int]]:
    first = draw(st.integers(min_value=-20, max_value=20))
    length = draw(
        st.one_of(
            st.integers(min_value=1, max_value=12),
            st.integers(min_value=28, max_value=31),  # calendar months
            st.integers(min_value=1, max_value=400),
        )
    )
    owner = draw(st.integers(min_value=0, max_value=3))
    tie = length % 2 == 0
    cents = st.one_of(st.integers(min_value=0, max_value=2_000), st.integers(min_value=0, max_value=10**10))
    spends = draw(st.lists(cents, min_size=3 if tie else 1, max_size=6))
    if tie:
        # Ways of rounding only disagree at half cents, which random cents rarely hit and real spend does
        # (issue 14): an even period's ads are made to total a half cent per day (≡ length / 2, mod
        # length), over at least three ads, whose repeating quotients would each round their own way.
        spends[-1] += (length // 2 - sum(spends)) % length
    return first, length, owner, spends


@settings(_SWEEP, max_examples=100)
@given(
    anchor=st.dates(
        min_value=REVENUE_DATE_MIN + dt.timedelta(days=400),
        max_value=REVENUE_DATE_MAX - dt.timedelta(days=400),
    ),
    periods=st.lists(_periods(), max_size=4),
    ready_offsets=st.lists(st.integers(min_value=-40 * 86400, max_value=40 * 86400), min_size=3, max_size=3),
    start_offset=st.integers(min_value=-20, max_value=20),
    days=st.one_of(
        st.integers(min_value=1, max_value=15), st.integers(min_value=1, max_value=REVENUE_DAYS_MAX)
    ),
)
# Issue 14: a 6-day period (the seed's December 1..6 on 2026-12-06) of three ads of one offer, 15.21
# together; its last day is 2.535 exactly, 2.54 half up. Each 5.0x / 6 is a repeating decimal that
# numeric division had cut (and rounded down) at 20 places, so their sum read 2.534999… → 2.53.
@example(
    anchor=dt.date(2026, 12, 6),
    periods=[(-5, 6, 0, [503, 509, 509])],
    ready_offsets=[0, 0, 0],
    start_offset=0,
    days=1,
)
def check_drawn_dataset(
    anchor: dt.date,
    periods: list[tuple[int, int, int, list[int]]],
    ready_offsets: list[int],
    start_offset: int,
    days: int,
    world: tuple[Tenant, list[Offer], list[LeadOffer]],
) -> None:
    tenant, offers, leads = world
    midnight = dt.datetime.combine(anchor, dt.time.min, tzinfo=dt.UTC)
    with transaction.atomic():
        for lead, seconds in zip(leads, ready_offsets, strict=True):
            LeadOffer.objects.filter(pk=lead.pk).update(qualified_at=midnight + dt.timedelta(seconds=seconds))
        PlatformCost.objects.bulk_create(
            PlatformCost(
                tenant=tenant if owner == 3 else offers[owner].tenant,
                offer=None if owner == 3 else offers[owner],
                ad_id=f"ad-{number}-{ad}",
                spend=Decimal(cents).scaleb(-2),
                date_start=anchor + dt.timedelta(days=first),
                date_end=anchor + dt.timedelta(days=first + length - 1),
            )
            for number, (first, length, owner, spends) in enumerate(periods)
            for ad, cents in enumerate(spends)
        )
        start = anchor + dt.timedelta(days=start_offset)
        end = start + dt.timedelta(days=days - 1)
        _assert_matches_the_reference(start, end, None)
        _assert_matches_the_reference(start, end, tenant.pk)
        transaction.set_rollback(True)


def test_any_dates_periods_and_spends_match_the_reference(small_world):
    check_drawn_dataset(world=small_world)
