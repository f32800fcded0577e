"""The keyset paginator is generic: any ordering ending in a unique column, any mix of directions."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from django.urls import include, path
from django.utils import timezone
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient, APIRequestFactory

from converzia.api.base import ApiViewSet
from converzia.api.pagination import KeysetPagination, SortKey, keyset_filter
from converzia.tenancy import scoped
from leads.models import LeadOffer, Offer
from leads.tests.factories import LeadOfferFactory, OfferFactory

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


class OfferRowSerializer(serializers.ModelSerializer):
    class Meta:
        model = Offer
        fields = ["id", "city"]


class CityAscViewSet(ApiViewSet):
    """City A→Z, then newest id first: mixed directions."""

    authentication_classes = ()
    permission_classes = (AllowAny,)
    queryset = Offer.objects.all()
    keyset_ordering = ("city", "-id")

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(OfferRowSerializer(page, many=True).data)


class BadOrderingViewSet(CityAscViewSet):
    keyset_ordering = ("-created_at", "city")


class ValuesViewSet(CityAscViewSet):
    """Rows as dicts (`.values()`), as aggregate-style lists produce."""

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(Offer.objects.values("id", "city"))
        return self.get_paginated_response([{"id": str(row["id"]), "city": row["city"]} for row in page])


urlpatterns = [
    path("api/test/cities", CityAscViewSet.as_view({"get": "list"})),
    path("api/test/values", ValuesViewSet.as_view({"get": "list"})),
    path("", include("converzia.urls")),
]
handler404 = "converzia.views.page_not_found"
handler500 = "converzia.views.server_error"


def walk(client, url: str, direction: str = "next") -> list[list[str]]:
    pages = []
    while url:
        body = client.get(url).json()
        pages.append([row["id"] for row in body["results"]])
        url = body[direction]
    return pages


@pytest.fixture
def offers_by_city(tenant) -> list[Offer]:
    cities = ["Rosario", "Córdoba", "Rosario", "Mendoza", "Córdoba", "Rosario", "Salta", "Córdoba"]
    return [OfferFactory(tenant=tenant, city=city) for city in cities]


def expected(offers: list[Offer]) -> list[str]:
    ordered = sorted(offers, key=lambda offer: offer.pk, reverse=True)  # -id ...
    ordered = sorted(ordered, key=lambda offer: offer.city)  # ... within city A→Z (stable sort)
    return [str(offer.pk) for offer in ordered]


@pytest.mark.parametrize("url", ["/api/test/cities", "/api/test/values"])
@pytest.mark.parametrize("page_size", [1, 2, 3, 8, 9])
def test_mixed_direction_ordering_lists_every_row_once(url, page_size, offers_by_city):
    pages = walk(APIClient(), f"{url}?page_size={page_size}")

    assert [row for page in pages for row in page] == expected(offers_by_city)
    assert all(len(page) == page_size for page in pages[:-1])


def test_mixed_direction_previous_links_mirror_next_links(offers_by_city):
    client = APIClient()
    forward = walk(client, "/api/test/cities?page_size=3")
    last_page = client.get("/api/test/cities?page_size=3")
    for _ in range(len(forward) - 1):
        last_page = client.get(last_page.json()["next"])

    backward = walk(client, last_page.json()["previous"], direction="previous")

    assert backward == list(reversed(forward[:-1]))


def test_empty_list_has_no_links():
    body = APIClient().get("/api/test/cities").json()

    assert body == {"results": [], "next": None, "previous": None}


def test_ordering_must_end_with_a_unique_field():
    request = Request(APIRequestFactory().get("/api/test/bad-ordering"))

    with pytest.raises(ImproperlyConfigured, match="must end with a unique field"):
        KeysetPagination().paginate_queryset(Offer.objects.all(), request, view=BadOrderingViewSet())


def test_cursor_of_one_ordering_is_rejected_by_another(tenant, owner, client_for, offers_by_city):
    cursor_url = APIClient().get("/api/test/cities?page_size=1").json()["next"]
    cursor = cursor_url.split("cursor=")[1].split("&")[0]

    response = client_for(owner).get("/api/portal/offers", {"cursor": cursor})

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"cursor": ["Invalid cursor."]}


def test_cursor_page_query_has_an_index_range_bound(offers_by_city):
    client = APIClient()
    next_url = client.get("/api/test/cities?page_size=2").json()["next"]

    with CaptureQueriesContext(connection) as queries:
        client.get(next_url)

    (sql,) = [query["sql"] for query in queries.captured_queries]
    assert '"offers"."city" >= ' in sql
    assert "OFFSET" not in sql.upper()
    assert sql.endswith("LIMIT 3")


def test_keyset_filter_uses_the_lead_list_index_as_a_range(tenant):
    for _ in range(3):
        LeadOfferFactory(offer=OfferFactory(tenant=tenant))
    keys = [SortKey.parse("-updated_at"), SortKey.parse("-id")]
    last = scoped(LeadOffer, tenant).order_by("-updated_at", "-id").first()
    queryset = (
        scoped(LeadOffer, tenant)
        .filter(keyset_filter(keys, (last.updated_at, last.pk)))
        .order_by("-updated_at", "-id")[:51]
    )

    with connection.cursor() as cursor:
        # Three rows would be seq-scanned; what matters is the condition the index gets.
        cursor.execute("SET LOCAL enable_seqscan = off")
    plan = queryset.explain()

    assert "idx_lead_offers_tenant_updated" in plan
    index_condition = next(line for line in plan.splitlines() if "Index Cond" in line)
    assert "updated_at <=" in index_condition
    assert "Sort" not in plan


def test_sort_key_parsing():
    assert SortKey.parse("-created_at") == SortKey(field="created_at", descending=True)
    assert SortKey.parse("id").reversed() == SortKey(field="id", descending=True)
    assert SortKey.parse("id").order_by() == "id"


def test_keyset_filter_shape():
    moment = timezone.now() - dt.timedelta(days=1)

    q = keyset_filter([SortKey.parse("-created_at"), SortKey.parse("-id")], (moment, 7))

    assert q == Q(created_at__lte=moment) & (Q(created_at__lt=moment) | Q(created_at=moment, id__lt=7))
