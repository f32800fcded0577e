"""Tenant-facing portal endpoints (API.md "Portal"). Thin: validate, call a selector, serialize."""

from __future__ import annotations

import uuid

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from converzia.api.base import TenantViewSet
from converzia.api.serializers import ChoiceListField
from converzia.tenancy import Permission
from leads.models import Offer, OfferStatus
from leads.selectors import offer_get_for_tenant, offer_list_for_tenant
from portal.api.serializers import FunnelCountsSerializer
from portal.stats import offers_with_funnels


class OfferViewSet(TenantViewSet):
    """The tenant's offers with their funnel counts."""

    queryset = Offer.objects.none()
    required_permission = Permission.VIEW_LEADS
    allowed_query_params = {"list": {"status"}}
    keyset_ordering = ("-created_at", "-id")
    lookup_value_converter = "uuid"

    class FilterSerializer(serializers.Serializer):
        status = ChoiceListField(
            choices=OfferStatus.choices,
            required=False,
            help_text="One or more offer statuses (repeat the parameter or separate with commas).",
        )

    class OutputSerializer(serializers.ModelSerializer):
        funnel = FunnelCountsSerializer(read_only=True)

        class Meta:
            model = Offer
            fields = [
                "id",
                "name",
                "slug",
                "status",
                "approval_status",
                "offer_type",
                "city",
                "zone",
                "price_from",
                "price_to",
                "currency",
                "created_at",
                "funnel",
            ]
            read_only_fields = fields

    @extend_schema(parameters=[FilterSerializer], responses=OutputSerializer(many=True), tags=["portal"])
    def list(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        offers = offer_list_for_tenant(tenant=self.tenant, statuses=filters.validated_data.get("status"))
        page = self.paginate_queryset(offers)
        page = offers_with_funnels(tenant=self.tenant, offers=page)
        return self.get_paginated_response(self.OutputSerializer(page, many=True).data)

    @extend_schema(responses=OutputSerializer, tags=["portal"])
    def retrieve(self, request: Request, pk: uuid.UUID) -> Response:
        offer = offer_get_for_tenant(tenant=self.tenant, offer_id=pk)
        (offer,) = offers_with_funnels(tenant=self.tenant, offers=[offer])
        return Response(self.OutputSerializer(offer).data)
