"""Prepared reads (converzia.db.prepared): the same rows as the ORM, compiled once per shape, and
refused when a value cannot be bound. Real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.models import Count, QuerySet
from django.test.utils import CaptureQueriesContext

from converzia.api.pagination import keyset_page
from converzia.db.prepared import PreparedQuery, Shape
from converzia.tenancy import scoped
from converzia.tests.factories import TenantFactory
from leads.models import LeadEvent, LeadOffer, LeadOfferStatus
from leads.tests.factories import LeadEventFactory, LeadOfferFactory, OfferFactory

pytestmark = pytest.mark.django_db

FIELDS = ("id", "status", "offer_id", "offer__name", "created_at", "score_total")


def lead_offers(
    *,
    tenant_id: uuid.UUID,
    statuses: list[str] | None = None,
    created_from: dt.datetime | None = None,
    order: tuple[str, ...] = ("-created_at", "-id"),
    after: tuple[Any, ...] | None = None,
    limit: int = 100,
) -> QuerySet[Any]:
    queryset = scoped(LeadOffer, tenant_id)
    if statuses is not None:
        queryset = queryset.filter(status__in=statuses)
    if created_from is not None:
        queryset = queryset.filter(created_at__gte=created_from)
    return keyset_page(queryset.values(*FIELDS), order, after, limit)


@pytest.fixture
def world() -> dict[str, Any]:
    tenant, other = TenantFactory(), TenantFactory()
    offer = OfferFactory(tenant=tenant, name="Torre Norte")
    statuses = [LeadOfferStatus.TO_BE_CONTACTED, LeadOfferStatus.LEAD_READY, LeadOfferStatus.DISQUALIFIED]
    rows = [LeadOfferFactory(offer=offer, status=statuses[index % 3]) for index in range(9)]
    LeadOfferFactory(offer=OfferFactory(tenant=other))  # never listed for `tenant`
    return {"tenant": tenant, "other": other, "rows": rows}


def orm_rows(**arguments: Any) -> list[dict[str, Any]]:
    return list(lead_offers(**arguments))


def prepared_rows(query: PreparedQuery, **arguments: Any) -> list[dict[str, Any]]:
    bound = {name: Shape(value) if name in ("order", "limit") else value for name, value in arguments.items()}
    return query.rows(**bound)


def test_rows_equal_the_orm_for_every_shape_and_value(world):
    query = PreparedQuery("test.lead_offers", lead_offers)
    tenant = world["tenant"]
    newest = orm_rows(tenant_id=tenant.pk)
    cursor = (newest[3]["created_at"], newest[3]["id"])
    cases = [
        {"tenant_id": tenant.pk},
        {"tenant_id": world["other"].pk},
        {"tenant_id": tenant.pk, "statuses": [LeadOfferStatus.LEAD_READY]},
        {"tenant_id": tenant.pk, "statuses": [LeadOfferStatus.LEAD_READY, LeadOfferStatus.DISQUALIFIED]},
        {"tenant_id": tenant.pk, "statuses": []},  # no statuses: no rows, no statement
        {"tenant_id": tenant.pk, "created_from": newest[5]["created_at"]},
        {"tenant_id": tenant.pk, "after": cursor, "limit": 3},
        {"tenant_id": tenant.pk, "after": cursor, "order": ("created_at", "id"), "limit": 4},
    ]
    for arguments in cases:
        assert prepared_rows(query, **arguments) == orm_rows(**arguments), arguments
    assert len(newest) == 9
    assert prepared_rows(query, tenant_id=tenant.pk, statuses=[]) == []


def test_each_shape_compiles_once_and_later_calls_run_one_statement(world):
    builds: list[dict[str, Any]] = []

    def counting(**arguments: Any) -> QuerySet[Any]:
        builds.append(arguments)
        return lead_offers(**arguments)

    query = PreparedQuery("test.counting", counting)
    tenant, other = world["tenant"], world["other"]
    query.rows(tenant_id=tenant.pk, limit=Shape(5))
    query.rows(tenant_id=other.pk, limit=Shape(5))
    with CaptureQueriesContext(connection) as captured:
        rows = query.rows(tenant_id=tenant.pk, limit=Shape(5))
    assert len(rows) == 5
    assert len(captured.captured_queries) == 1
    assert len(builds) == 1, "one shape, one compilation"
    # The builder saw stand-ins, never a caller's value.
    assert builds[0]["tenant_id"] not in (tenant.pk, other.pk)

    query.rows(tenant_id=tenant.pk, limit=Shape(6))  # another LIMIT: another statement text
    query.rows(tenant_id=tenant.pk, statuses=["LEAD_READY"], limit=Shape(5))  # a filter appears
    query.rows(tenant_id=tenant.pk, statuses=["LEAD_READY", "DISQUALIFIED"], limit=Shape(5))  # 2 items
    query.rows(tenant_id=tenant.pk, statuses=["DISQUALIFIED", "LEAD_READY"], limit=Shape(5))  # same shape
    assert len(builds) == 4


def test_converters_run_as_the_orm_runs_them(world):
    """JSON details and aggregates come back as `.values()` gives them."""
    lead_offer = world["rows"][0]
    LeadEventFactory(lead_offer=lead_offer, details={"reason": "ok", "n": [1, 2]})

    def events(*, lead_offer_id: uuid.UUID) -> QuerySet[Any]:
        return (
            LeadEvent.objects.filter(lead_offer_id=lead_offer_id)
            .values("lead_offer_id")
            .annotate(events=Count("id"))
            .values("lead_offer_id", "events")
        )

    def details(*, lead_offer_id: uuid.UUID) -> QuerySet[Any]:
        return LeadEvent.objects.filter(lead_offer_id=lead_offer_id).values("details", "created_at")

    for build in (events, details):
        query = PreparedQuery(f"test.{build.__name__}", build)
        assert query.rows(lead_offer_id=lead_offer.pk) == list(build(lead_offer_id=lead_offer.pk))
    (row,) = PreparedQuery("test.details", details).rows(lead_offer_id=lead_offer.pk)
    assert row["details"] == {"reason": "ok", "n": [1, 2]}
    assert row["created_at"].tzinfo is dt.UTC


def test_a_value_a_lookup_transforms_is_refused_at_compile_time(world):
    query = PreparedQuery(
        "test.search",
        lambda name: LeadOffer.objects.filter(offer__name__icontains=name).values("id"),
    )
    with pytest.raises(ImproperlyConfigured, match="name did not reach the statement as parameters"):
        query.rows(name="Torre")


def test_a_limit_must_be_a_shape(world):
    query = PreparedQuery(
        "test.limit", lambda tenant_id, limit: scoped(LeadOffer, tenant_id).values("id")[:limit]
    )
    with pytest.raises(ImproperlyConfigured, match="limit did not reach"):
        query.rows(tenant_id=world["tenant"].pk, limit=3)
    assert len(query.rows(tenant_id=world["tenant"].pk, limit=Shape(3))) == 3


def test_only_values_querysets_and_bindable_values(world):
    with pytest.raises(ImproperlyConfigured, match="values"):
        PreparedQuery("test.models", lambda tenant_id: scoped(LeadOffer, tenant_id)).rows(
            tenant_id=world["tenant"].pk
        )
    query = PreparedQuery("test.any", lead_offers)
    with pytest.raises(TypeError, match="cannot be bound"):
        query.rows(tenant_id=world["tenant"], limit=Shape(1))  # a model instance, not its id
    with pytest.raises(TypeError, match="cannot be bound"):
        query.rows(tenant_id=world["tenant"].pk, statuses=[object()], limit=Shape(1))
