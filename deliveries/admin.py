"""Staff admin for delivery destinations, deliveries and their attempts.

Deliveries and attempts are written by the delivery worker under the state machine (a trigger
enforces it), so both are view-only here; a destination's secret is never displayed, only its hint.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Q

from converzia.admin_tools import (
    ExactSearchMixin,
    FastModelAdmin,
    NoDeleteMixin,
    TenantFilter,
    ViewOnlyInlineMixin,
    ViewOnlyMixin,
    admin_change_link,
    any_of,
    as_uuid,
)
from deliveries.models import Delivery, DeliveryAttempt, DeliveryDestination
from leads.admin import lead_offer_ids_for_phone
from leads.models import LeadOffer


@admin.register(DeliveryDestination)
class DeliveryDestinationAdmin(NoDeleteMixin, FastModelAdmin):
    """Deactivate a destination rather than delete it: its deliveries keep pointing at it."""

    list_display = (
        "tenant",
        "destination_type",
        "url",
        "is_active",
        "secret_hint",
        "last_success_at",
        "last_failure_at",
        "disabled_at",
    )
    list_filter = (TenantFilter, "is_active", "destination_type")
    list_select_related = ("tenant",)
    search_fields = ("url", "tenant__name")
    search_help_text = "URL or tenant name (substring)."
    autocomplete_fields = ("tenant",)
    ordering = ("tenant__name",)
    # `secret` is left out of the form: it is generated on creation and never shown in full.
    fields = (
        "tenant",
        "destination_type",
        "url",
        "is_active",
        "disabled_reason",
        "secret_hint",
        "disabled_at",
        "last_success_at",
        "last_failure_at",
        "created_at",
        "updated_at",
    )
    readonly_fields = (
        "secret_hint",
        "disabled_at",
        "last_success_at",
        "last_failure_at",
        "created_at",
        "updated_at",
    )

    @admin.display(description="secret")
    def secret_hint(self, obj: DeliveryDestination) -> str:
        return obj.secret_hint


class DeliveryAttemptInline(ViewOnlyInlineMixin, admin.TabularInline):
    model = DeliveryAttempt
    fields = ("attempt_number", "created_at", "url", "status_code", "succeeded", "duration_ms", "error")
    readonly_fields = fields
    # A delivery has at most its retry limit of attempts; (delivery, attempt_number) is unique.
    ordering = ("attempt_number",)


@admin.register(Delivery)
class DeliveryAdmin(ViewOnlyMixin, ExactSearchMixin, FastModelAdmin):
    list_display = (
        "short_id",
        "tenant",
        "offer",
        "lead_offer_link",
        "status",
        "blocked_reason",
        "attempt_count",
        "next_attempt_at",
        "delivered_at",
        "created_at",
    )
    list_display_links = ("short_id",)
    list_filter = (TenantFilter, "status", "blocked_reason", "no_charge_reason")
    list_select_related = ("tenant", "offer")
    search_fields = ("=id",)
    search_help_text = "Exact: delivery id, lead offer id or lead phone (any format)."
    sortable_by = ()
    ordering = ("-pk",)
    # idx_deliveries_tenant_status_created / idx_deliveries_status_created.
    indexed_orderings = ((("status__exact",), ("-created_at",)),)
    inlines = (DeliveryAttemptInline,)

    @admin.display(description="id")
    def short_id(self, obj: Delivery) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="lead offer")
    def lead_offer_link(self, obj: Delivery) -> str:
        return admin_change_link(LeadOffer, obj.lead_offer_id)

    def exact_search_q(self, term: str) -> Q | None:
        some_id = as_uuid(term)
        if some_id is not None:
            # The primary key and the one-to-one lead_offer's unique index.
            return Q(pk=some_id) | Q(lead_offer_id=some_id)
        lead_offer_ids = lead_offer_ids_for_phone(term)
        if lead_offer_ids is None:
            return None
        return any_of([Q(lead_offer_id__in=lead_offer_ids)] if lead_offer_ids else [])


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(ViewOnlyMixin, ExactSearchMixin, FastModelAdmin):
    list_display = (
        "delivery_link",
        "attempt_number",
        "created_at",
        "status_code",
        "succeeded",
        "duration_ms",
        "url",
    )
    list_filter = ("succeeded",)
    search_fields = ("=delivery__id",)
    search_help_text = "Exact: delivery id or attempt id."
    sortable_by = ()
    # The model's ordering, (delivery, attempt_number), is its unique index: no sort, no -pk.

    @admin.display(description="delivery")
    def delivery_link(self, obj: DeliveryAttempt) -> str:
        return admin_change_link(Delivery, obj.delivery_id)

    def exact_search_q(self, term: str) -> Q | None:
        some_id = as_uuid(term)
        if some_id is None:
            return None
        return Q(pk=some_id) | Q(delivery_id=some_id)
