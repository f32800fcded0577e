"""Staff admin for delivery destinations, deliveries and their attempts.

Deliveries and attempts are written by the delivery worker under the state machine (a trigger
enforces it), so both are view-only here; a destination's secret is never displayed, only its hint.
Staff move a delivery only through the actions, which call `deliveries.services`: retry (dead
letters and failed deliveries) and refund (with a reason). The actions need the model's change
permission (superusers have it), even though the page itself stays read-only.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from converzia.admin_tools import (
    ExactSearchMixin,
    FastModelAdmin,
    NoDeleteMixin,
    TenantFilter,
    ViewOnlyInlineMixin,
    ViewOnlyMixin,
    action_objects,
    admin_change_link,
    any_of,
    as_uuid,
    form_action,
    run_for_each,
)
from deliveries.models import Delivery, DeliveryAttempt, DeliveryDestination
from deliveries.services import delivery_refund, delivery_retry, lead_offer_advance
from leads.admin import LeadOfferAdmin, lead_offer_ids_for_phone
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


class DeliveryRefundForm(forms.Form):
    # CharField strips whitespace first, so a blank reason is refused too.
    reason = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Stored on the refund ledger entry and in the lead's billing notes.",
    )


def _report(modeladmin: admin.ModelAdmin, request: HttpRequest, *, done: int, failed: int, verb: str) -> None:
    """One summary line after the per-row error messages that `run_for_each` already wrote."""
    if done:
        modeladmin.message_user(request, f"{verb} {done} delivery(ies).", messages.SUCCESS)
    if failed:
        modeladmin.message_user(
            request, f"{failed} delivery(ies) could not be {verb.lower()} (see above).", messages.WARNING
        )


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
    actions = ("retry_deliveries", "refund_deliveries")
    # View-only: every field is read-only; grouped so the state machine's bookkeeping is visible.
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "tenant",
                    "offer",
                    "lead_offer_link",
                    "destination",
                    "status",
                    "blocked_reason",
                    "no_charge_reason",
                    "trace_id",
                )
            },
        ),
        (
            "Attempts",
            {
                "fields": (
                    "attempt_count",
                    "attempt_budget_start",
                    "next_attempt_at",
                    "last_attempt_at",
                    "claimed_until",
                    "error_message",
                )
            },
        ),
        ("Outcome", {"fields": ("delivered_at", "refunded_at", "dead_letter_at", "dead_letter_reason")}),
        ("Payload", {"fields": ("payload",), "classes": ("collapse",)}),
        (None, {"fields": ("created_at", "updated_at")}),
    )
    readonly_fields = tuple(name for _, options in fieldsets for name in options["fields"])

    @admin.display(description="id")
    def short_id(self, obj: Delivery) -> str:
        return str(obj.pk)[:8]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """The actions move money and deliveries: they need the change permission the page hides."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    @admin.action(description="Retry (dead letters and failed)", permissions=("operate",))
    def retry_deliveries(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        objects = action_objects(self, request, queryset)
        if objects is None:
            return
        done = run_for_each(
            self, request, objects, lambda delivery: delivery_retry(delivery=delivery, actor=request.user)
        )
        _report(self, request, done=len(done), failed=len(objects) - len(done), verb="Retried")

    @admin.action(description="Refund credit…", permissions=("operate",))
    def refund_deliveries(
        self, request: HttpRequest, queryset: QuerySet[Delivery]
    ) -> TemplateResponse | None:
        def apply(request: HttpRequest, objects: list[Delivery], data: dict[str, Any]) -> None:
            def refund(delivery: Delivery) -> Any:
                return delivery_refund(delivery=delivery, reason=data["reason"], actor=request.user)

            done = run_for_each(self, request, objects, refund)
            _report(self, request, done=len(done), failed=len(objects) - len(done), verb="Refunded")

        return form_action(
            self,
            request,
            queryset,
            form_class=DeliveryRefundForm,
            title="Refund credits",
            intro="Each delivered delivery gets its credit back (a CREDIT_REFUND ledger entry) and "
            "becomes REFUNDED; the lead's billing goes back to PENDING.",
            submit_label="Refund",
            apply=apply,
        )

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


# The lead offer admin's status changes go through the deliveries domain: reaching LEAD_READY creates
# the lead's delivery, leaving it cancels a waiting one, and SENT_TO_DEVELOPER is refused (only a
# successful delivery sets it, because that is where the credit is charged).
admin.site.unregister(LeadOffer)


@admin.register(LeadOffer)
class LeadOfferWithDeliveryAdmin(LeadOfferAdmin):
    def transition_lead_offer(
        self,
        *,
        lead_offer: LeadOffer,
        to_status: str,
        actor: Any,
        reason: str,
        disqualification_category: str,
    ) -> LeadOffer:
        return lead_offer_advance(
            lead_offer=lead_offer,
            to_status=to_status,
            actor=actor,
            reason=reason,
            disqualification_category=disqualification_category,
        )
