"""GET /api/portal/leads and /api/portal/leads/{id} (API.md "Portal"): the tenant's lead_offers.

Both need `view_leads`; PII follows leads.privacy (delivered leads, or `view_lead_details`). The list
is keyset-paginated on (-updated_at, -id), the order of idx_lead_offers_tenant[_status]_updated, and
never counts. Rows are hand-built dicts (portal.selectors); the serializers below document them.
"""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from converzia.api.base import TenantViewSet
from converzia.api.serializers import ChoiceListField
from converzia.tenancy import Permission
from deliveries.models import DeliveryBlockedReason, DeliveryStatus
from leads.funnel import STAGE_KEYS
from leads.models import ActorType, BillingEligibility, LeadEventType, LeadOffer, LeadOfferStatus
from portal.selectors import LeadFilters, portal_lead_detail, portal_lead_page


class LeadOfferRefSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()


class LeadContactSerializer(serializers.Serializer):
    display_name = serializers.CharField(
        help_text="The lead's name, or `Lead #<first 8 of id>` when its PII is hidden from this caller."
    )
    phone = serializers.CharField(allow_null=True, help_text="E.164; masked when PII is hidden.")
    email = serializers.CharField(allow_null=True, help_text="Masked when PII is hidden.")


class LeadSourceRefSerializer(serializers.Serializer):
    platform = serializers.CharField(allow_null=True)
    ad_id = serializers.CharField(allow_null=True)
    form_id = serializers.CharField(allow_null=True)
    campaign_id = serializers.CharField(allow_null=True)


class LeadDeliverySerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=DeliveryStatus.choices)
    attempts = serializers.IntegerField()
    delivered_at = serializers.DateTimeField(allow_null=True)
    blocked_reason = serializers.ChoiceField(choices=DeliveryBlockedReason.choices, allow_null=True)


class LeadTimelineEventSerializer(serializers.Serializer):
    event_type = serializers.ChoiceField(choices=LeadEventType.choices)
    created_at = serializers.DateTimeField()
    actor_type = serializers.ChoiceField(choices=ActorType.choices)
    details = serializers.DictField(help_text="Event data; PII keys masked when PII is hidden.")


class LeadViewSet(TenantViewSet):
    """The tenant's lead_offers (every funnel stage), newest activity first."""

    queryset = LeadOffer.objects.none()
    required_permission = Permission.VIEW_LEADS
    allowed_query_params = {
        "list": {"status", "stage", "offer_id", "created_from", "created_to", "q"},
        "retrieve": set(),
    }
    keyset_ordering = ("-updated_at", "-id")
    lookup_value_converter = "uuid"

    class FilterSerializer(serializers.Serializer):
        status = ChoiceListField(
            choices=LeadOfferStatus.choices,
            required=False,
            help_text="One or more statuses (repeat the parameter or separate with commas).",
        )
        stage = serializers.ChoiceField(choices=STAGE_KEYS, required=False, help_text="A funnel stage.")
        offer_id = serializers.UUIDField(required=False, help_text="Only this offer's leads.")
        created_from = serializers.DateField(
            required=False, help_text="Created on or after this day (tenant time zone)."
        )
        created_to = serializers.DateField(
            required=False, help_text="Created on or before this day (tenant time zone)."
        )
        q = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=200,
            help_text="Name, email or phone. Searches only leads whose contact data you may see.",
        )

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            start, end = attrs.get("created_from"), attrs.get("created_to")
            if start and end and start > end:
                raise serializers.ValidationError({"created_to": ["Must not be before created_from."]})
            return attrs

    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        status = serializers.ChoiceField(choices=LeadOfferStatus.choices)
        # A CharField, not a ChoiceField: the funnel's `key` (portal.api.stats) documents the same
        # choice set, and two enum names for one set fail `check --deploy` (drf_spectacular.W001).
        stage = serializers.CharField(help_text=f"Funnel stage: {', '.join(STAGE_KEYS)}.")
        offer = LeadOfferRefSerializer(allow_null=True, help_text="Null while the ad is unmapped.")
        lead = LeadContactSerializer()
        score_total = serializers.IntegerField(allow_null=True)
        billing_eligibility = serializers.ChoiceField(choices=BillingEligibility.choices)
        source = LeadSourceRefSerializer()
        created_at = serializers.DateTimeField()
        updated_at = serializers.DateTimeField()
        status_changed_at = serializers.DateTimeField()

    class DetailSerializer(OutputSerializer):
        qualification_fields = serializers.DictField(help_text="Name-like keys masked when PII is hidden.")
        score_breakdown = serializers.DictField()
        delivery = LeadDeliverySerializer(allow_null=True)
        timeline = LeadTimelineEventSerializer(many=True, help_text="The latest 200 events, oldest first.")

    @extend_schema(parameters=[FilterSerializer], responses=OutputSerializer(many=True), tags=["portal"])
    def list(self, request: Request) -> Response:
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        filters = LeadFilters(
            statuses=data.get("status"),
            stage=data.get("stage"),
            offer_id=data.get("offer_id"),
            created_from=data.get("created_from"),
            created_to=data.get("created_to"),
            q=(data.get("q") or "").strip() or None,
        )
        items = portal_lead_page(
            tenant=self.tenant,
            filters=filters,
            can_view_details=self.tenant_context.can(Permission.VIEW_LEAD_DETAILS),
            paginate=self.paginate_queryset,
            paginate_prepared=self.paginate_prepared,
        )
        return self.get_paginated_response(items)

    @extend_schema(responses=DetailSerializer, tags=["portal"])
    def retrieve(self, request: Request, pk: uuid.UUID) -> Response:
        item = portal_lead_detail(
            tenant=self.tenant,
            lead_offer_id=pk,
            can_view_details=self.tenant_context.can(Permission.VIEW_LEAD_DETAILS),
        )
        return Response(item)
