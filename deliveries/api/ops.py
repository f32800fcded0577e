"""Staff operations on lead_offers (API.md "Ops"): move one through the funnel, or store its qualification.

- `POST /api/ops/lead-offers/{id}/transition` `{"to", "reason"?, "disqualification_category"?}`
- `POST /api/ops/lead-offers/{id}/qualification`
  `{"score_total", "qualification_fields"?, "score_breakdown"?}`

Both answer 200 with the lead_offer (and its delivery, or null). Conventions:
- Staff only (`is_staff`; a service token is a token of a staff user): anonymous 401, others 403. No
  X-Tenant-ID: staff act across tenants; the lead_offer's tenant goes into the logging context.
- Unknown body fields are refused with 400 `invalid_input` (as unknown query parameters are), and the
  body is validated before the lead is looked at. A missing lead_offer, or an id that is not a UUID,
  answers 404 `not_found` (after authentication, so an anonymous caller learns nothing).
- A move the matrix does not allow (DOMAIN.md §2.8), SENT_TO_DEVELOPER (only a delivery sets it), or
  a qualification of a lead not in QUALIFYING/HUMAN_HANDOFF/SCORED answers 409 `invalid_transition`
  with `details` `{from, to, allowed}`. A move to the current status is a no-op: 200, no event.

The views only validate, call one service of `deliveries.services.lifecycle` and serialize.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from converzia.api.base import ApiViewSet
from converzia.api.permissions import IsStaff
from converzia.request_context import tenant_id_var
from deliveries.api.serializers import (
    LeadOfferQualificationSerializer,
    LeadOfferSerializer,
    LeadOfferTransitionSerializer,
)
from deliveries.services import lead_offer_advance, lead_offer_qualify
from leads.models import LeadOffer
from leads.selectors import lead_offer_get_for_staff

ID_PARAMETER = OpenApiParameter(
    "id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The lead_offer id."
)


def _lead_offer_for_staff(lead_offer_id: str) -> LeadOffer:
    """The lead_offer to act on (any tenant: staff only), its tenant put in the logging context."""
    lead_offer = lead_offer_get_for_staff(lead_offer_id=lead_offer_id)
    tenant_id_var.set(str(lead_offer.tenant_id))
    return lead_offer


def _representation(lead_offer: LeadOffer) -> dict:
    """The committed row with its delivery, in one query (the service may have created or ended it)."""
    fresh = LeadOffer.objects.select_related("delivery").get(pk=lead_offer.pk)
    return LeadOfferSerializer(fresh).data


class LeadOfferOpsViewSet(ApiViewSet):
    """Staff moves of one lead_offer; see the module docstring for the conventions."""

    queryset = LeadOffer.objects.none()
    permission_classes = (IsStaff,)
    pagination_class = None
    schema_error_statuses = (409,)

    @extend_schema(
        operation_id="ops_lead_offer_transition",
        parameters=[ID_PARAMETER],
        request=LeadOfferTransitionSerializer,
        responses=LeadOfferSerializer,
        tags=["ops"],
        description=(
            "Move the lead_offer to `to` under the transition matrix. LEAD_READY creates its delivery; "
            "leaving LEAD_READY (STOPPED, DISQUALIFIED) ends a waiting delivery uncharged. "
            "SENT_TO_DEVELOPER is refused (only a delivery sets it). 409 `invalid_transition` lists "
            "the allowed targets in `details.allowed`. Unknown body fields → 400."
        ),
    )
    def transition(self, request: Request, id: str) -> Response:
        payload = LeadOfferTransitionSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        lead_offer = _lead_offer_for_staff(id)
        updated = lead_offer_advance(
            lead_offer=lead_offer,
            to_status=data["to"],
            actor=request.user,
            reason=data["reason"],
            disqualification_category=data.get("disqualification_category", ""),
        )
        return Response(_representation(updated))

    @extend_schema(
        operation_id="ops_lead_offer_qualification",
        parameters=[ID_PARAMETER],
        request=LeadOfferQualificationSerializer,
        responses=LeadOfferSerializer,
        tags=["ops"],
        description=(
            "Store a qualification: the fields are merged into the stored ones, the score replaces the "
            "stored one. At or above the tenant's threshold the lead becomes LEAD_READY (creating its "
            "delivery), below it SCORED (a HUMAN_HANDOFF lead passes through QUALIFYING). 409 "
            "`invalid_transition` unless the lead is QUALIFYING, HUMAN_HANDOFF or SCORED. Unknown "
            "body fields → 400."
        ),
    )
    def qualification(self, request: Request, id: str) -> Response:
        payload = LeadOfferQualificationSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        lead_offer = _lead_offer_for_staff(id)
        updated = lead_offer_qualify(
            lead_offer=lead_offer,
            score_total=data["score_total"],
            qualification_fields=data.get("qualification_fields"),
            score_breakdown=data.get("score_breakdown"),
            actor=request.user,
        )
        return Response(_representation(updated))


lead_offer_transition_view = LeadOfferOpsViewSet.as_view({"post": "transition"})
lead_offer_qualification_view = LeadOfferOpsViewSet.as_view({"post": "qualification"})
