"""Staff read endpoints (API.md "Admin"). Thin: a selector, a serializer."""

from __future__ import annotations

import dataclasses
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from converzia.api.base import ApiView
from converzia.api.permissions import IsStaff
from converzia.api.schema import error_response
from portal.admin_stats import ADMIN_TREND_DAYS, LOW_CREDIT_LIST_LIMIT, admin_stats_get
from portal.api.http_caching import FRESH_PARAM, cached_response, fresh_allowed
from portal.queue import queue_depth_get
from portal.revenue import (
    REVENUE_DATE_MAX,
    REVENUE_DATE_MIN,
    REVENUE_DAYS_DEFAULT,
    REVENUE_DAYS_MAX,
    RevenueFigures,
    RevenueReport,
    revenue_default_range,
    revenue_get,
)


class AdminQueueView(ApiView):
    """`GET /api/admin/queue`: pending inbox events, due, failed, waiting and dead-letter deliveries,
    and the oldest ages. Live counts, never cached (an operator looks here when something is stuck)."""

    permission_classes = (IsStaff,)

    class OutputSerializer(serializers.Serializer):
        class InboxSerializer(serializers.Serializer):
            pending_events = serializers.IntegerField()
            oldest_pending_age_s = serializers.FloatField(allow_null=True)
            parked_changes = serializers.DictField(child=serializers.IntegerField())

        class DeliveriesSerializer(serializers.Serializer):
            due = serializers.IntegerField()
            oldest_due_age_s = serializers.FloatField(allow_null=True)
            in_flight = serializers.IntegerField()
            failed = serializers.IntegerField()
            waiting = serializers.DictField(child=serializers.IntegerField(), help_text="By blocked reason.")
            dead_letter = serializers.IntegerField()

        as_of = serializers.DateTimeField()
        depth = serializers.IntegerField(help_text="Pending inbox events + due deliveries.")
        inbox = InboxSerializer()
        deliveries = DeliveriesSerializer()

    @extend_schema(responses=OutputSerializer, tags=["admin"])
    def get(self, request: Request) -> Response:
        depth = queue_depth_get()
        body = {
            "as_of": depth.as_of,
            "depth": depth.pending_events + depth.due_deliveries,
            "inbox": {
                "pending_events": depth.pending_events,
                "oldest_pending_age_s": depth.oldest_pending_age_s,
                "parked_changes": depth.parked_changes,
            },
            "deliveries": {
                "due": depth.due_deliveries,
                "oldest_due_age_s": depth.oldest_due_age_s,
                "in_flight": depth.in_flight_deliveries,
                "failed": depth.failed_deliveries,
                "waiting": depth.waiting_deliveries,
                "dead_letter": depth.dead_letter_deliveries,
            },
        }
        return Response(self.OutputSerializer(body).data)


# --- revenue ---------------------------------------------------------------------------------------

_MONEY = {"max_digits": 16, "decimal_places": 2}
_CENT = Decimal("0.01")
# DecimalField quantizes under the default context with its max_digits as the precision.
_MONEY_CONTEXT = Context(prec=_MONEY["max_digits"])


class RevenueFiguresSerializer(serializers.Serializer):
    leads_ready_count = serializers.IntegerField(help_text="lead_offers that first became LEAD_READY.")
    leads_ready_value = serializers.DecimalField(**_MONEY, help_text="Ready count × cost_per_lead.")
    leads_delivered_count = serializers.IntegerField(help_text="Deliveries completed.")
    leads_delivered_value = serializers.DecimalField(**_MONEY, help_text="Delivered count × cost_per_lead.")
    payments_received = serializers.DecimalField(**_MONEY, help_text="Totals of completed billing orders.")
    credits_consumed = serializers.IntegerField(help_text="Credits consumed (ledger).")
    credits_refunded = serializers.IntegerField(help_text="Credits refunded (ledger).")
    attributed_spend = serializers.DecimalField(
        **_MONEY, help_text="Ad spend, each period spread evenly over its days."
    )
    profit = serializers.DecimalField(**_MONEY, help_text="leads_ready_value − attributed_spend.")
    margin_pct = serializers.FloatField(
        allow_null=True,
        help_text="profit / leads_ready_value × 100, 2 decimals; null when there is no value.",
    )


class RevenueSummarySerializer(RevenueFiguresSerializer):
    pending_credits = serializers.IntegerField(help_text="Credits the tenants hold now (not range-bound).")


class RevenueDaySerializer(RevenueFiguresSerializer):
    date = serializers.DateField(help_text="A UTC date.")


class RevenueTenantSerializer(RevenueFiguresSerializer):
    tenant_id = serializers.UUIDField()
    name = serializers.CharField()
    cost_per_lead = serializers.DecimalField(**_MONEY)
    pending_credits = serializers.IntegerField(help_text="The tenant's balance now.")
    cpl_attributed = serializers.DecimalField(
        **_MONEY, allow_null=True, help_text="attributed_spend / leads_ready_count; null without ready leads."
    )


class RevenueOfferSerializer(RevenueFiguresSerializer):
    offer_id = serializers.UUIDField()
    name = serializers.CharField()
    tenant_id = serializers.UUIDField()
    tenant_name = serializers.CharField()


class DateRangeSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()


class AdminRevenueView(ApiView):
    """`GET /api/admin/revenue`: money and lead value over UTC dates, by day, tenant and offer.

    Ready and delivered count immutable facts (first LEAD_READY, delivery completion), never the
    current status; see `portal.revenue` for every definition. Cached 300 s (`?fresh=true` recomputes);
    ETag and 304 like the portal stats. Reads never write.
    """

    permission_classes = (IsStaff,)
    allowed_query_params = {"date_start", "date_end", "tenant_id", FRESH_PARAM}
    schema_not_modified = True

    class FilterSerializer(serializers.Serializer):
        date_start = serializers.DateField(
            required=False, help_text=f"First UTC date (default: date_end − {REVENUE_DAYS_DEFAULT - 1} days)."
        )
        date_end = serializers.DateField(
            required=False, help_text="Last UTC date, included (default: today)."
        )
        tenant_id = serializers.UUIDField(
            required=False, help_text="Only this tenant (an unknown one: 404 `not_found`)."
        )
        fresh = serializers.BooleanField(default=False, help_text="Recompute instead of reading the cache.")

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            # Far-off dates are typos, and the date arithmetic below must not overflow.
            for name in ("date_start", "date_end"):
                value = attrs.get(name)
                if value is not None and not REVENUE_DATE_MIN <= value <= REVENUE_DATE_MAX:
                    raise serializers.ValidationError(
                        {name: [f"Must be between {REVENUE_DATE_MIN} and {REVENUE_DATE_MAX}."]}
                    )
            default_start, default_end = revenue_default_range()
            end = attrs.get("date_end") or default_end
            start = attrs.get("date_start") or end - (default_end - default_start)
            if end < start:
                raise serializers.ValidationError({"date_end": ["Must not be before date_start."]})
            if (end - start).days + 1 > REVENUE_DAYS_MAX:
                raise serializers.ValidationError(
                    {"date_end": [f"The range may span at most {REVENUE_DAYS_MAX} days."]}
                )
            return {**attrs, "date_start": start, "date_end": end}

    class OutputSerializer(serializers.Serializer):
        date_range = DateRangeSerializer(help_text="The UTC dates covered, both included.")
        tenant_id = serializers.UUIDField(allow_null=True, help_text="The tenant filter, or null for all.")
        as_of = serializers.DateTimeField(help_text="When these numbers were computed.")
        cached = serializers.BooleanField(help_text="True when served from the server cache.")
        summary = RevenueSummarySerializer()
        by_day = RevenueDaySerializer(many=True, help_text="Every date of the range, oldest first.")
        by_tenant = RevenueTenantSerializer(
            many=True, help_text="Tenants with any figure in the range, highest ready value first."
        )
        by_offer = RevenueOfferSerializer(
            many=True,
            help_text="Offers with ready or delivered leads or spend in range, highest ready value first.",
        )

    @extend_schema(
        parameters=[FilterSerializer],
        responses={200: OutputSerializer, 404: error_response("`not_found`: `tenant_id` names no tenant.")},
        tags=["admin"],
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        fresh = fresh_allowed(data["fresh"], is_staff=request.user.is_staff)
        read = revenue_get(
            date_start=data["date_start"],
            date_end=data["date_end"],
            tenant_id=data.get("tenant_id"),
            fresh=fresh,
            render=self._render,
        )
        as_of = serializers.DateTimeField().to_representation(read.as_of)
        return cached_response(request, {**read.value, "as_of": as_of, "cached": read.cached})

    def _render(self, report: RevenueReport) -> dict[str, Any]:
        """The body without `as_of` and `cached`, rendered once per computation (and cached so)."""
        return revenue_body(report)


def revenue_money(value: Decimal | None) -> str | None:
    """What `DecimalField(max_digits=16, decimal_places=2)` renders, without the field machinery."""
    if value is None:
        return None
    return f"{value.quantize(_CENT, rounding=ROUND_HALF_EVEN, context=_MONEY_CONTEXT):f}"


def _figures_body(figures: RevenueFigures) -> dict[str, Any]:
    return {
        "leads_ready_count": figures.leads_ready_count,
        "leads_ready_value": revenue_money(figures.leads_ready_value),
        "leads_delivered_count": figures.leads_delivered_count,
        "leads_delivered_value": revenue_money(figures.leads_delivered_value),
        "payments_received": revenue_money(figures.payments_received),
        "credits_consumed": figures.credits_consumed,
        "credits_refunded": figures.credits_refunded,
        "attributed_spend": revenue_money(figures.attributed_spend),
        "profit": revenue_money(figures.profit),
        "margin_pct": None if figures.margin_pct is None else float(figures.margin_pct),
    }


def revenue_body(report: RevenueReport) -> dict[str, Any]:
    """The revenue body as JSON types, built directly: `AdminRevenueView.OutputSerializer` documents it
    (the schema) and a test holds the two equal, but running ~1,000 rows through nested serializers
    cost as much as the SQL itself (measured on the 2M bench: 70–120 ms under load vs 77–122 ms)."""
    return {
        "date_range": {"start": report.date_start.isoformat(), "end": report.date_end.isoformat()},
        "tenant_id": None if report.tenant_id is None else str(report.tenant_id),
        "summary": {**_figures_body(report.summary), "pending_credits": report.pending_credits},
        # Figures first, then the row's own fields: the serializers' field order (they extend the
        # figures serializer), so the bytes and ETags stay what clients have seen.
        "by_day": [{**_figures_body(day.figures), "date": day.day.isoformat()} for day in report.by_day],
        "by_tenant": [
            {
                **_figures_body(row.figures),
                "tenant_id": str(row.tenant_id),
                "name": row.name,
                "cost_per_lead": revenue_money(row.cost_per_lead),
                "pending_credits": row.pending_credits,
                "cpl_attributed": revenue_money(row.cpl_attributed),
            }
            for row in report.by_tenant
        ],
        "by_offer": [
            {
                **_figures_body(row.figures),
                "offer_id": str(row.offer_id),
                "name": row.name,
                "tenant_id": str(row.tenant_id),
                "tenant_name": row.tenant_name,
            }
            for row in report.by_offer
        ],
    }


# --- platform stats --------------------------------------------------------------------------------


class LowCreditTenantSerializer(serializers.Serializer):
    tenant_id = serializers.UUIDField()
    name = serializers.CharField()
    balance = serializers.IntegerField()
    threshold = serializers.IntegerField(help_text="The tenant's own low_credit_threshold.")


class AdminStatsView(ApiView):
    """`GET /api/admin/stats`: the platform dashboard, from `tenant_stats_materialized` and small
    tables (never a live count over lead_offers); see `portal.admin_stats`. Not cached server-side."""

    permission_classes = (IsStaff,)

    class OutputSerializer(serializers.Serializer):
        class TotalsSerializer(serializers.Serializer):
            tenants = serializers.IntegerField()
            active_tenants = serializers.IntegerField()
            offers = serializers.IntegerField()
            active_offers = serializers.IntegerField()
            credits_outstanding = serializers.IntegerField(help_text="Credits all tenants hold now.")
            leads_30d = serializers.IntegerField(help_text="lead_offers created over `trend`.")
            delivered_30d = serializers.IntegerField(help_text="Deliveries completed over `trend`.")

        class PendingApprovalsSerializer(serializers.Serializer):
            tenants = serializers.IntegerField(help_text="Tenants in PENDING.")
            memberships = serializers.IntegerField(help_text="Memberships in PENDING_APPROVAL.")
            offers = serializers.IntegerField(help_text="Offers whose approval_status is PENDING_APPROVAL.")

        class UnmappedAdsSerializer(serializers.Serializer):
            pending_mapping_leads = serializers.IntegerField(
                help_text="lead_offers in PENDING_MAPPING (tenant known, ad not mapped to an offer)."
            )
            unrouted_changes = serializers.IntegerField(
                help_text="Inbox changes parked UNROUTED (no active mapping for the ad)."
            )
            unrouted_ads = serializers.IntegerField(help_text="Distinct ads behind the unrouted changes.")

        class LowCreditSerializer(serializers.Serializer):
            count = serializers.IntegerField(help_text="ACTIVE tenants below their own threshold.")
            tenants = LowCreditTenantSerializer(
                many=True, help_text=f"At most {LOW_CREDIT_LIST_LIMIT}, lowest balance first."
            )

        class TrendPointSerializer(serializers.Serializer):
            date = serializers.DateField()
            received = serializers.IntegerField(help_text="lead_offers created that (tenant-local) day.")
            delivered = serializers.IntegerField(help_text="Deliveries completed that (tenant-local) day.")

        as_of = serializers.DateTimeField(
            allow_null=True, help_text="When the view's data was taken (its last refresh); null if never."
        )
        view_age_s = serializers.FloatField(allow_null=True, help_text="Seconds since that refresh.")
        totals = TotalsSerializer()
        active_tenants = serializers.IntegerField()
        leads_today = serializers.IntegerField(help_text="lead_offers created in each tenant's local today.")
        delivered_today = serializers.IntegerField(
            help_text="Deliveries completed in each tenant's local today."
        )
        pending_approvals = PendingApprovalsSerializer()
        unmapped_ads = UnmappedAdsSerializer()
        low_credit_tenants = LowCreditSerializer()
        trend = TrendPointSerializer(many=True, help_text=f"The last {ADMIN_TREND_DAYS} days, oldest first.")

    @extend_schema(responses=OutputSerializer, tags=["admin"])
    def get(self, request: Request) -> Response:
        stats = admin_stats_get()
        body = {
            "as_of": stats.as_of,
            "view_age_s": stats.view_age_s,
            "totals": {
                "tenants": stats.tenants,
                "active_tenants": stats.active_tenants,
                "offers": stats.offers,
                "active_offers": stats.active_offers,
                "credits_outstanding": stats.credits_outstanding,
                "leads_30d": stats.leads_30d,
                "delivered_30d": stats.delivered_30d,
            },
            "active_tenants": stats.active_tenants,
            "leads_today": stats.leads_today,
            "delivered_today": stats.delivered_today,
            "pending_approvals": {
                "tenants": stats.pending_tenants,
                "memberships": stats.pending_memberships,
                "offers": stats.pending_offers,
            },
            "unmapped_ads": {
                "pending_mapping_leads": stats.pending_mapping_leads,
                "unrouted_changes": stats.unrouted_changes,
                "unrouted_ads": stats.unrouted_ads,
            },
            "low_credit_tenants": {
                "count": stats.low_credit_count,
                "tenants": [dataclasses.asdict(row) for row in stats.low_credit_tenants],
            },
            "trend": [
                {"date": point.day, "received": point.received, "delivered": point.delivered}
                for point in stats.trend
            ],
        }
        return Response(self.OutputSerializer(body).data)
