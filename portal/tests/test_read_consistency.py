"""The read API agrees with itself and with SQL on seeded data (3 tenants, 3,000 lead_offers, 2 months),
and the lead list's cursor keeps its promise while rows change between pages (at the end).

For each tenant, these must be the same numbers: the lead list walked to its end with the cursor and
counted per stage and status, `leads/stats`, `funnel`, and a direct SQL GROUP BY over lead_offers.
Then: sum(stages) == total, sum(statuses) == total, the disqualification categories add up to the
DISQUALIFIED count, the delivered windows and the trend equal the DELIVERY_COMPLETED events of those
days, and every delivered lead (SENT_TO_DEVELOPER) has such an event.
"""

from __future__ import annotations

import datetime as dt
import io
from collections import Counter

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from converzia.models import Tenant
from converzia.tests.api_world import bearer_client
from converzia.tests.factories import StaffUserFactory, TenantMemberFactory
from leads.funnel import STAGE_KEYS, stage_for_status
from leads.models import DisqualificationCategory, LeadEventType, LeadOffer, LeadOfferStatus
from leads.tests.factories import LeadOfferFactory, OfferFactory
from portal.stats_view import tenant_local_midnight, tenant_local_today, tenant_stats_refresh

pytestmark = pytest.mark.django_db


def sql_rows(query: str, params: list[object]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall()


def sql_status_counts(tenant: Tenant) -> dict[str, int]:
    rows = sql_rows(
        "SELECT status, COUNT(*) FROM lead_offers WHERE tenant_id = %s GROUP BY status", [tenant.pk]
    )
    return {status: count for status, count in rows}


def sql_delivered_events(tenant: Tenant, start: dt.datetime, end: dt.datetime | None = None) -> int:
    query = "SELECT COUNT(*) FROM lead_events WHERE tenant_id = %s AND event_type = %s AND created_at >= %s"
    params: list[object] = [tenant.pk, LeadEventType.DELIVERY_COMPLETED, start]
    if end is not None:
        query += " AND created_at < %s"
        params.append(end)
    return sql_rows(query, params)[0][0]


def sql_created(tenant: Tenant, start: dt.datetime, end: dt.datetime) -> int:
    return sql_rows(
        "SELECT COUNT(*) FROM lead_offers WHERE tenant_id = %s AND created_at >= %s AND created_at < %s",
        [tenant.pk, start, end],
    )[0][0]


def walk_leads(client) -> tuple[Counter, Counter, int]:
    """The whole lead list through its cursor: (per stage, per status, rows), each id once."""
    stages, statuses, seen = Counter(), Counter(), set()
    url = "/api/portal/leads?page_size=200"
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content[:300]
        body = response.json()
        for item in body["results"]:
            assert item["id"] not in seen, "a row listed twice"
            seen.add(item["id"])
            stages[item["stage"]] += 1
            statuses[item["status"]] += 1
        url = body["next"]
    return stages, statuses, len(seen)


@pytest.fixture
def seeded() -> list[Tenant]:
    call_command(
        "seed_demo",
        "--tenants",
        "3",
        "--leads",
        "3000",
        "--months",
        "2",
        "--seed",
        "11",
        "--no-progress",
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    tenant_stats_refresh(concurrently=False)
    return list(Tenant.objects.order_by("pk"))


def test_list_stats_funnel_and_sql_agree_for_every_tenant(seeded):
    staff = StaffUserFactory()
    assert len(seeded) == 3
    assert sum(sum(sql_status_counts(tenant).values()) for tenant in seeded) == 3000

    for tenant in seeded:
        client = bearer_client(staff, tenant)
        by_status = sql_status_counts(tenant)
        sql_stages = Counter()
        for status, count in by_status.items():
            sql_stages[stage_for_status(status)] += count
        total = sum(by_status.values())

        listed_stages, listed_statuses, listed = walk_leads(client)
        stats = client.get("/api/portal/leads/stats?fresh=true").json()
        funnel = client.get("/api/portal/funnel").json()
        funnel_stages = {stage["key"]: stage["count"] for stage in funnel["stages"]}

        expected_stages = {key: sql_stages.get(key, 0) for key in STAGE_KEYS}
        assert listed == stats["total"] == funnel["total"] == total, tenant.slug
        assert {key: listed_stages.get(key, 0) for key in STAGE_KEYS} == expected_stages
        assert stats["stages"] == expected_stages
        assert funnel_stages == expected_stages
        assert sum(stats["stages"].values()) == stats["total"]
        assert sum(stats["statuses"].values()) == stats["total"]
        assert stats["statuses"] == {status: by_status.get(status, 0) for status in LeadOfferStatus.values}
        assert {status: listed_statuses.get(status, 0) for status in LeadOfferStatus.values} == stats[
            "statuses"
        ]
        assert sum(stats["disqualification"].values()) == stats["statuses"]["DISQUALIFIED"]
        # By category, as SQL groups DISQUALIFIED rows (an empty or unknown category is OTHER).
        sql_categories: Counter[str] = Counter()
        for category, count in sql_rows(
            "SELECT disqualification_category, COUNT(*) FROM lead_offers"
            " WHERE tenant_id = %s AND status = 'DISQUALIFIED' GROUP BY 1",
            [tenant.pk],
        ):
            sql_categories[category if category in DisqualificationCategory.values else "OTHER"] += count
        assert stats["disqualification"] == {c: sql_categories[c] for c in DisqualificationCategory.values}
        assert sum(offer["total"] for offer in funnel["offers"]) <= funnel["total"]  # unmapped leads aside

        # Delivered: the DELIVERY_COMPLETED events of each window, cut at the tenant's local midnight.
        today = tenant_local_today(tenant, now=timezone.now())
        for name, days in (("today", 1), ("7d", 7), ("30d", 30)):
            start = tenant_local_midnight(tenant, today - dt.timedelta(days=days - 1))
            assert stats[f"delivered_{name}"] == sql_delivered_events(tenant, start), (tenant.slug, name)
            assert stats[f"leads_{name}"] == sql_created(tenant, start, timezone.now() + dt.timedelta(days=1))
        # The trend (from the materialized view) counts the same deliveries, day by day.
        for point in stats["trend"]:
            day = dt.date.fromisoformat(point["date"])
            start, end = (
                tenant_local_midnight(tenant, day),
                tenant_local_midnight(tenant, day + dt.timedelta(days=1)),
            )
            assert point["delivered"] == sql_delivered_events(tenant, start, end), (tenant.slug, day)
            assert point["received"] == sql_created(tenant, start, end), (tenant.slug, day)
        assert stats["delivered_30d"] > 0, "the seeded month has deliveries to compare"

        # Every lead in the delivered stage got there through a completed delivery.
        undelivered = sql_rows(
            "SELECT COUNT(*) FROM lead_offers lo WHERE lo.tenant_id = %s AND lo.status = %s AND NOT EXISTS ("
            " SELECT 1 FROM lead_events e WHERE e.lead_offer_id = lo.id AND e.event_type = %s)",
            [tenant.pk, LeadOfferStatus.SENT_TO_DEVELOPER, LeadEventType.DELIVERY_COMPLETED],
        )[0][0]
        assert undelivered == 0


# --- keyset pages while rows change ----------------------------------------------------------------
#
# The guarantee of the lead list's cursor (converzia.api.pagination; order -updated_at, -id): the
# cursor is the last listed row's (updated_at, id), and the next page is every row strictly after it.
# So during one walk from the first page to the last:
# - every row whose (updated_at, id) does not change is listed exactly once, in order;
# - rows created meanwhile sort before the cursor: this walk does not list them (a new walk does);
# - a row updated meanwhile moves to the front: listed once if the walk had already passed it, not at
#   all if it had not (a new walk lists it first);
# - no row is ever listed twice.


def test_a_walk_lists_every_unchanged_row_once_while_others_are_inserted_and_updated():
    member = TenantMemberFactory()
    offer = OfferFactory(tenant=member.tenant)
    start = timezone.now() - dt.timedelta(hours=1)
    rows = [LeadOfferFactory(offer=offer) for _ in range(10)]
    for index, row in enumerate(rows):
        # Newest first: rows[0] is on the first page; pairs tie on updated_at (the id breaks the tie).
        LeadOffer.objects.filter(pk=row.pk).update(updated_at=start - dt.timedelta(minutes=index // 2))
    order = [
        str(pk)
        for pk in LeadOffer.objects.filter(pk__in=[r.pk for r in rows])
        .order_by("-updated_at", "-id")
        .values_list("pk", flat=True)
    ]
    client = bearer_client(member.user)

    first = client.get("/api/portal/leads", {"page_size": 3}).json()
    seen = [item["id"] for item in first["results"]]
    passed, ahead = seen[1], order[6]  # one row the walk has listed, one it has not reached
    for pk in (passed, ahead):
        row = LeadOffer.objects.get(pk=pk)
        row.score_total = 50
        row.save(update_fields=["score_total", "updated_at"])  # auto_now: updated_at becomes now
    inserted = LeadOfferFactory(offer=offer)
    url = first["next"]
    while url:
        page = client.get(url).json()
        seen += [item["id"] for item in page["results"]]
        url = page["next"]

    assert len(seen) == len(set(seen)), "no row is listed twice"
    assert seen == [pk for pk in order if pk != ahead], (
        "unchanged rows once, in order; the updated one ahead skipped"
    )
    assert str(inserted.pk) not in seen
    fresh = [item["id"] for item in client.get("/api/portal/leads", {"page_size": 3}).json()["results"]]
    assert set(fresh) == {str(inserted.pk), ahead, passed}, "a new walk starts with what changed"
