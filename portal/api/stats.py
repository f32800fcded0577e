"""The tenant's numbers: `GET /api/portal/leads/stats` and `GET /api/portal/funnel` (API.md "Portal").

Both need `view_leads`, are cached server-side (60 s / 120 s, invalidated by any lead change) and
HTTP-cacheable (ETag, 304; see `portal.api.http_caching`). `?fresh=true` bypasses the server cache
for platform staff; anyone else gets 403 `forbidden`.

Each is a viewset with one action, `read`: one resource, not a collection, so it is neither a `list`
(no pagination, no `-list` route name) nor a `retrieve` (no id). `PortalRouter` (portal.api.urls)
serves `read` as `GET {prefix}`, named after the basename.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from converzia.api.base import TenantViewSet
from converzia.api.schema import error_response
from converzia.tenancy import Permission
from leads.funnel import FUNNEL_STAGES
from leads.models import DisqualificationCategory, LeadOfferStatus, OfferStatus
from portal.api.http_caching import FRESH_PARAM, cached_response, fresh_allowed
from portal.api.serializers import FunnelStagesSerializer
from portal.stats import STATS_DAYS_DEFAULT, STATS_DAYS_MAX, funnel_get, lead_stats_get


def _as_of(instant: dt.datetime) -> str:
    return serializers.DateTimeField().to_representation(instant)


# The bodies are returned as built, not passed through their OutputSerializer: `*_compute` already
# yields the documented JSON types and order (the serializers stay as the schema, and a test holds
# the two byte-equal), and re-serializing ~100 nested fields cost 2–4 ms of a 6 ms cached read.
_FRESH_HELP = "Bypass the server cache (platform staff only; others get 403 `forbidden`)."
_STAGE_KEY_HELP = ", ".join(f"{stage.key} ({stage.label})" for stage in FUNNEL_STAGES)


def _counters(names: list[str], help_text: str) -> type[serializers.Serializer]:
    """A serializer with one integer field per name (statuses, disqualification categories)."""

    class Counters(serializers.Serializer):
        def get_fields(self) -> dict[str, serializers.Field]:
            return {name: serializers.IntegerField(help_text=help_text) for name in names}

    return Counters


class StatusCountersSerializer(_counters(list(LeadOfferStatus.values), "lead_offers now in this status.")):
    """One counter per lead_offer status (13)."""


class DisqualificationCountersSerializer(
    _counters(list(DisqualificationCategory.values), "DISQUALIFIED lead_offers in this category.")
):
    """One counter per disqualification category (9), over DISQUALIFIED rows only; an empty or
    unknown category counts as OTHER."""


class StatsTrendPointSerializer(serializers.Serializer):
    date = serializers.DateField(help_text="A local day of the tenant.")
    received = serializers.IntegerField(help_text="lead_offers created that day.")
    delivered = serializers.IntegerField(help_text="Deliveries completed that day.")


class LeadStatsViewSet(TenantViewSet):
    """Live funnel counts, recent windows, balance and the daily trend of the tenant."""

    required_permission = Permission.VIEW_LEADS
    # A set, not a mapping by action: the one action's parameters, which OPTIONS (DRF's `metadata`
    # action) accepts too, as every route does for its GET.
    allowed_query_params = {"days", FRESH_PARAM}
    pagination_class = None
    schema_not_modified = True

    class FilterSerializer(serializers.Serializer):
        days = serializers.IntegerField(
            min_value=1,
            max_value=STATS_DAYS_MAX,
            default=STATS_DAYS_DEFAULT,
            help_text="How many local days `trend` covers, ending today.",
        )
        fresh = serializers.BooleanField(default=False, help_text=_FRESH_HELP)

    class OutputSerializer(serializers.Serializer):
        tenant_id = serializers.UUIDField()
        as_of = serializers.DateTimeField(help_text="When these numbers were computed.")
        cached = serializers.BooleanField(help_text="True when served from the server cache.")
        total = serializers.IntegerField(
            help_text="All lead_offers of the tenant; always the sum of `stages`."
        )
        stages = FunnelStagesSerializer()
        statuses = StatusCountersSerializer()
        disqualification = DisqualificationCountersSerializer()
        conversion_rate = serializers.FloatField(help_text="delivered / total × 100, 2 decimals.")
        leads_today = serializers.IntegerField(help_text="lead_offers created since local midnight.")
        leads_7d = serializers.IntegerField(
            help_text="lead_offers created in the last 7 local days (today included)."
        )
        leads_30d = serializers.IntegerField(
            help_text="lead_offers created in the last 30 local days (today included)."
        )
        delivered_today = serializers.IntegerField(help_text="Deliveries completed since local midnight.")
        delivered_7d = serializers.IntegerField(help_text="Deliveries completed in the last 7 local days.")
        delivered_30d = serializers.IntegerField(help_text="Deliveries completed in the last 30 local days.")
        credit_balance = serializers.IntegerField(help_text="Credits available now.")
        active_offers = serializers.IntegerField(help_text="Offers in status ACTIVE.")
        trend = StatsTrendPointSerializer(
            many=True, help_text="The last `days` local days, oldest first; from tenant_stats_materialized."
        )

    @extend_schema(parameters=[FilterSerializer], responses=OutputSerializer, tags=["portal"])
    def read(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        fresh = fresh_allowed(filters.validated_data["fresh"], is_staff=request.user.is_staff)
        read = lead_stats_get(tenant=self.tenant, days=filters.validated_data["days"], fresh=fresh)
        body: dict[str, Any] = {
            "tenant_id": str(self.tenant.pk),
            "as_of": _as_of(read.as_of),
            "cached": read.cached,
            **read.value,
        }
        return cached_response(request, body)


class FunnelStageSerializer(serializers.Serializer):
    key = serializers.ChoiceField(choices=[stage.key for stage in FUNNEL_STAGES], help_text=_STAGE_KEY_HELP)
    label = serializers.CharField()
    count = serializers.IntegerField()
    share = serializers.FloatField(help_text="count / total × 100, 2 decimals; 0 when total is 0.")


class FunnelOfferSerializer(serializers.Serializer):
    offer_id = serializers.UUIDField()
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=OfferStatus.choices)
    total = serializers.IntegerField(help_text="The offer's lead_offers; always the sum of `stages`.")
    stages = FunnelStagesSerializer()
    conversion_rate = serializers.FloatField(help_text="delivered / total × 100, 2 decimals.")


class FunnelViewSet(TenantViewSet):
    """The tenant's funnel by stage, and per offer, in one grouped query.

    Totals include unmapped leads (no offer yet), which appear in no item of `offers`. `offers` lists
    every offer of the tenant (only the named one with `offer_id`), zero-filled, most leads first.
    """

    required_permission = Permission.VIEW_LEADS
    # A set, as on LeadStatsViewSet.
    allowed_query_params = {"offer_id", "created_from", "created_to", FRESH_PARAM}
    pagination_class = None
    schema_not_modified = True

    class FilterSerializer(serializers.Serializer):
        offer_id = serializers.UUIDField(
            required=False, help_text="Only this offer (another tenant's or a missing one: 404 `not_found`)."
        )
        created_from = serializers.DateField(
            required=False, help_text="Leads created on or after this local day (tenant time zone)."
        )
        created_to = serializers.DateField(
            required=False, help_text="Leads created on or before this local day (tenant time zone)."
        )
        fresh = serializers.BooleanField(default=False, help_text=_FRESH_HELP)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            start, end = attrs.get("created_from"), attrs.get("created_to")
            if start and end and start > end:
                raise serializers.ValidationError({"created_to": ["Must not be before created_from."]})
            return attrs

    class OutputSerializer(serializers.Serializer):
        as_of = serializers.DateTimeField(help_text="When these numbers were computed.")
        cached = serializers.BooleanField(help_text="True when served from the server cache.")
        stages = FunnelStageSerializer(many=True, help_text="The five stages, in funnel order.")
        total = serializers.IntegerField(help_text="All matching lead_offers, unmapped ones included.")
        conversion_rate = serializers.FloatField(help_text="delivered / total × 100, 2 decimals.")
        offers = FunnelOfferSerializer(many=True)

    @extend_schema(
        parameters=[FilterSerializer],
        responses={
            200: OutputSerializer,
            404: error_response(
                "`not_found`: `offer_id` names no offer of the tenant (missing or another's)."
            ),
        },
        tags=["portal"],
    )
    def read(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        fresh = fresh_allowed(data["fresh"], is_staff=request.user.is_staff)
        read = funnel_get(
            tenant=self.tenant,
            offer_id=data.get("offer_id"),
            created_from=data.get("created_from"),
            created_to=data.get("created_to"),
            fresh=fresh,
        )
        body: dict[str, Any] = {"as_of": _as_of(read.as_of), "cached": read.cached, **read.value}
        return cached_response(request, body)
