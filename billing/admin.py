"""Staff admin for tenants (with their approval and credit actions), pricing, orders, the ledger,
balances, low-credit alerts and platform costs.

Every credit movement goes through `billing.services`: the ledger, the balance rows and the alerts are
view-only here. `Tenant` is registered in this module because its actions call billing services (the
kernel must not import billing); the kernel-only parts live in `converzia.admin.TenantAdminBase`.
"""

from __future__ import annotations

import re
from typing import Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from billing.forms import CreditAdjustmentForm, CreditBonusForm, CreditPurchaseForm, TenantRejectForm
from billing.models import (
    BillingOrder,
    BillingOrderStatus,
    CreditAlert,
    CreditLedger,
    CreditTransactionType,
    PlatformCost,
    TenantCreditBalance,
    TenantPricing,
)
from billing.services import (
    billing_order_complete,
    credit_adjust,
    credit_balance_get,
    credit_bonus_grant,
    credit_purchase_record,
    tenant_approve,
    tenant_reject,
    trial_credits_grant,
)
from converzia.admin import TenantAdminBase, TenantMemberInline
from converzia.admin_tools import (
    ExactSearchMixin,
    FastModelAdmin,
    NoAddMixin,
    NoDeleteMixin,
    TenantFilter,
    ViewOnlyInlineMixin,
    ViewOnlyMixin,
    action_objects,
    admin_change_link,
    as_uuid,
    form_action,
    limited_inline_formset,
    run_for_each,
)
from converzia.models import Tenant
from leads.models import LeadOffer

T = CreditTransactionType
LEDGER_ENTRIES_SHOWN = 20
# The admin dashboard's "low credit" line (DOMAIN.md §5.5).
LOW_BALANCE_BELOW = 10
ORDER_NUMBER_RE = re.compile(r"^\d{4}-\d{6}$")
# Resolved lazily: billing must not import deliveries (the arrows point the other way).
DELIVERY_MODEL = CreditLedger._meta.get_field("delivery").related_model


def _balance_of(tenant: Tenant) -> int:
    try:
        return tenant.credit_balance.balance
    except TenantCreditBalance.DoesNotExist:
        return 0


# --- Tenants ----------------------------------------------------------------------------------------


class TenantPricingInline(admin.StackedInline):
    model = TenantPricing
    max_num = 1
    extra = 0
    can_delete = False
    readonly_fields = ("created_at", "updated_at")


class TenantLedgerInline(ViewOnlyInlineMixin, admin.TabularInline):
    model = CreditLedger
    formset = limited_inline_formset(LEDGER_ENTRIES_SHOWN)
    fields = (
        "created_at",
        "transaction_type",
        "amount",
        "balance_after",
        "description",
        "notes",
        "created_by",
    )
    readonly_fields = fields
    # idx_credit_ledger_tenant_created serves this page: tenant, created_at DESC, id DESC.
    ordering = ("-created_at", "-id")
    verbose_name_plural = f"credit ledger (latest {LEDGER_ENTRIES_SHOWN})"

    def get_queryset(self, request: HttpRequest) -> QuerySet[CreditLedger]:
        return super().get_queryset(request).select_related("created_by")


@admin.register(Tenant)
class TenantAdmin(TenantAdminBase):
    list_display = (*TenantAdminBase.list_display[:4], "credits", *TenantAdminBase.list_display[4:])
    list_select_related = ("credit_balance",)
    readonly_fields = (*TenantAdminBase.readonly_fields, "credits")
    fieldsets = (
        *TenantAdminBase.fieldsets[:1],
        ("Credits", {"fields": ("credits",)}),
        *TenantAdminBase.fieldsets[1:],
    )
    inlines = (TenantMemberInline, TenantPricingInline, TenantLedgerInline)
    actions = (
        "approve_tenants",
        "reject_tenants",
        "grant_trial_credits",
        "record_credit_purchase",
        "grant_bonus_credits",
        "adjust_credits",
    )

    @admin.display(description="credits")
    def credits(self, obj: Tenant) -> int:
        return _balance_of(obj)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # The same actions as buttons on the tenant's page (see the change_form template).
        buttons = [
            ("approve_tenants", "Approve"),
            ("grant_trial_credits", "Grant trial credits"),
            ("record_credit_purchase", "Record purchase"),
            ("grant_bonus_credits", "Grant bonus"),
            ("adjust_credits", "Adjust credits"),
            ("reject_tenants", "Reject"),
        ]
        extra_context = {**(extra_context or {}), "tenant_actions": buttons}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description="Approve (activate pending members, default pricing, trial credits)")
    def approve_tenants(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        objects = action_objects(self, request, queryset)
        if objects is None:
            return
        done = run_for_each(
            self, request, objects, lambda tenant: tenant_approve(tenant=tenant, actor=request.user)
        )
        if done:
            names = ", ".join(str(tenant) for tenant, _ in done)
            self.message_user(request, f"Approved {len(done)} tenant(s): {names}.", messages.SUCCESS)

    @admin.action(description="Reject…")
    def reject_tenants(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> TemplateResponse | None:
        def apply(request: HttpRequest, objects: list[Tenant], data: dict[str, Any]) -> None:
            done = run_for_each(
                self,
                request,
                objects,
                lambda tenant: tenant_reject(tenant=tenant, reason=data["reason"], actor=request.user),
            )
            if done:
                self.message_user(request, f"Rejected {len(done)} tenant(s).", messages.SUCCESS)

        return form_action(
            self,
            request,
            queryset,
            form_class=TenantRejectForm,
            title="Reject tenants",
            intro="Their pending memberships are revoked with this reason.",
            submit_label="Reject",
            apply=apply,
        )

    @admin.action(description="Grant trial credits (once per tenant)")
    def grant_trial_credits(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        objects = action_objects(self, request, queryset)
        if objects is None:
            return
        done = run_for_each(
            self, request, objects, lambda tenant: trial_credits_grant(tenant=tenant, actor=request.user)
        )
        for tenant, entry in done:
            self.message_user(
                request,
                f"{tenant}: {entry.amount} trial credits granted; balance {entry.balance_after}.",
                messages.SUCCESS,
            )

    @admin.action(description="Record a credit purchase…")
    def record_credit_purchase(
        self, request: HttpRequest, queryset: QuerySet[Tenant]
    ) -> TemplateResponse | None:
        def apply(request: HttpRequest, objects: list[Tenant], data: dict[str, Any]) -> None:
            def record(tenant: Tenant) -> BillingOrder:
                return credit_purchase_record(
                    tenant=tenant,
                    credits=data["credits"],
                    total=data["total"],
                    currency=data["currency"],
                    package_name=data["package_name"],
                    payment_reference=data["payment_reference"],
                    actor=request.user,
                )

            for tenant, order in run_for_each(self, request, objects, record):
                self.message_user(
                    request,
                    f"{tenant}: order {order.order_number} recorded, +{order.credits_purchased} credits; "
                    f"balance {credit_balance_get(tenant=tenant)}.",
                    messages.SUCCESS,
                )

        return form_action(
            self,
            request,
            queryset,
            form_class=CreditPurchaseForm,
            title="Record a credit purchase",
            intro="Creates a completed billing order and credits it in one transaction.",
            submit_label="Record purchase",
            apply=apply,
            exactly_one=True,
        )

    @admin.action(description="Grant bonus credits…")
    def grant_bonus_credits(
        self, request: HttpRequest, queryset: QuerySet[Tenant]
    ) -> TemplateResponse | None:
        def apply(request: HttpRequest, objects: list[Tenant], data: dict[str, Any]) -> None:
            done = run_for_each(
                self,
                request,
                objects,
                lambda tenant: credit_bonus_grant(
                    tenant=tenant, amount=data["amount"], reason=data["reason"], actor=request.user
                ),
            )
            for tenant, entry in done:
                self.message_user(
                    request,
                    f"{tenant}: +{entry.amount} bonus credits; balance {entry.balance_after}.",
                    messages.SUCCESS,
                )

        return form_action(
            self,
            request,
            queryset,
            form_class=CreditBonusForm,
            title="Grant bonus credits",
            submit_label="Grant bonus",
            apply=apply,
        )

    @admin.action(description="Adjust credits (signed, with a reason)…")
    def adjust_credits(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> TemplateResponse | None:
        def apply(request: HttpRequest, objects: list[Tenant], data: dict[str, Any]) -> None:
            done = run_for_each(
                self,
                request,
                objects,
                lambda tenant: credit_adjust(
                    tenant=tenant, amount=data["amount"], reason=data["reason"], actor=request.user
                ),
            )
            for tenant, entry in done:
                self.message_user(
                    request,
                    f"{tenant}: adjusted {entry.amount:+d}; balance {entry.balance_after}.",
                    messages.SUCCESS,
                )

        return form_action(
            self,
            request,
            queryset,
            form_class=CreditAdjustmentForm,
            title="Adjust credits",
            intro="A correcting ledger entry; the balance can never go below zero.",
            submit_label="Adjust",
            apply=apply,
            exactly_one=True,
        )


# --- Pricing, orders --------------------------------------------------------------------------------


@admin.register(TenantPricing)
class TenantPricingAdmin(NoDeleteMixin, FastModelAdmin):
    """One row per tenant (created on approval); a tenant's pricing is edited, never removed."""

    list_display = (
        "tenant",
        "charge_model",
        "cost_per_lead",
        "currency",
        "default_trial_credits",
        "low_credit_threshold",
        "updated_at",
    )
    list_filter = ("charge_model",)
    list_select_related = ("tenant",)
    search_fields = ("tenant__name",)
    search_help_text = "Tenant name (substring)."
    autocomplete_fields = ("tenant",)
    ordering = ("tenant__name",)

    def get_readonly_fields(self, request: HttpRequest, obj: TenantPricing | None = None) -> tuple[str, ...]:
        fixed = ("created_at", "updated_at")
        return fixed if obj is None else ("tenant", *fixed)


class OrderLedgerInline(ViewOnlyInlineMixin, admin.TabularInline):
    model = CreditLedger
    fk_name = "billing_order"
    fields = ("created_at", "transaction_type", "amount", "balance_after", "created_by")
    readonly_fields = fields


@admin.register(BillingOrder)
class BillingOrderAdmin(NoAddMixin, NoDeleteMixin, FastModelAdmin):
    """Orders are created by "Record a credit purchase" on a tenant (or by the portal later) and
    completed by the action below; only the payment reference and notes are edited by hand."""

    list_display = (
        "order_number",
        "tenant",
        "package_name",
        "credits_purchased",
        "total",
        "currency",
        "status",
        "paid_at",
        "created_at",
    )
    list_filter = (TenantFilter, "status")
    list_select_related = ("tenant",)
    search_fields = ("=order_number", "=payment_reference", "tenant__name")
    search_help_text = "Order number or payment reference (exact), or tenant name (substring)."
    ordering = ("-created_at",)
    readonly_fields = (
        "id",
        "tenant",
        "order_number",
        "package_name",
        "credits_purchased",
        "subtotal",
        "discount_amount",
        "tax_amount",
        "total",
        "currency",
        "status",
        "paid_at",
        "created_by",
        "created_at",
        "updated_at",
    )
    inlines = (OrderLedgerInline,)
    actions = ("complete_orders",)

    @admin.action(description="Mark completed and credit")
    def complete_orders(self, request: HttpRequest, queryset: QuerySet[BillingOrder]) -> None:
        objects = action_objects(self, request, queryset)
        if objects is None:
            return
        pending = [order for order in objects if order.status != BillingOrderStatus.COMPLETED]
        done = run_for_each(
            self, request, pending, lambda order: billing_order_complete(order=order, actor=request.user)
        )
        if done:
            credited = sum(order.credits_purchased for order, _ in done)
            self.message_user(
                request, f"Completed {len(done)} order(s); {credited} credits added.", messages.SUCCESS
            )
        already = len(objects) - len(pending)
        if already:
            self.message_user(request, f"{already} order(s) were already completed.", messages.INFO)


# --- Ledger and balances (view-only) ----------------------------------------------------------------


@admin.register(CreditLedger)
class CreditLedgerAdmin(ViewOnlyMixin, ExactSearchMixin, FastModelAdmin):
    """The immutable journal (a trigger rejects UPDATEs): read-only. Corrections are new entries,
    made with the tenant's "Adjust credits" action."""

    list_display = (
        "created_at",
        "tenant",
        "transaction_type",
        "signed_amount",
        "balance_after",
        "description",
        "order_link",
        "delivery_link",
        "lead_offer_link",
        "created_by",
    )
    list_filter = (TenantFilter, "transaction_type")
    list_select_related = ("tenant", "created_by", "billing_order")
    search_fields = ("=id",)
    search_help_text = "Exact: entry id, delivery id, billing order id or order number."
    sortable_by = ()
    ordering = ("-pk",)
    # idx_credit_ledger_tenant_created is exactly (tenant, created_at DESC, id DESC).
    indexed_orderings = ((("tenant",), ("-created_at",)),)

    @admin.display(description="amount")
    def signed_amount(self, obj: CreditLedger) -> str:
        return f"{obj.amount:+d}"

    @admin.display(description="order")
    def order_link(self, obj: CreditLedger) -> str:
        if obj.billing_order_id is None:
            return "-"
        return admin_change_link(BillingOrder, obj.billing_order_id, obj.billing_order.order_number)

    @admin.display(description="delivery")
    def delivery_link(self, obj: CreditLedger) -> str:
        return admin_change_link(DELIVERY_MODEL, obj.delivery_id)

    @admin.display(description="lead offer")
    def lead_offer_link(self, obj: CreditLedger) -> str:
        return admin_change_link(LeadOffer, obj.lead_offer_id)

    def exact_search_q(self, term: str) -> Q | None:
        some_id = as_uuid(term)
        if some_id is not None:
            # Each arm names the transaction type so the partial unique indexes can serve it.
            return (
                Q(pk=some_id)
                | Q(delivery_id=some_id, transaction_type=T.CREDIT_CONSUMPTION)
                | Q(delivery_id=some_id, transaction_type=T.CREDIT_REFUND)
                | Q(billing_order_id=some_id, transaction_type=T.CREDIT_PURCHASE)
            )
        if ORDER_NUMBER_RE.match(term):
            order_ids = list(BillingOrder.objects.filter(order_number=term).values_list("pk", flat=True))
            return Q(billing_order_id__in=order_ids, transaction_type=T.CREDIT_PURCHASE)
        return None


class LowBalanceFilter(admin.SimpleListFilter):
    title = "balance"
    parameter_name = "balance"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("low", f"Below {LOW_BALANCE_BELOW}"), ("zero", "Zero")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[TenantCreditBalance]) -> QuerySet[Any]:
        if self.value() == "low":
            return queryset.filter(balance__lt=LOW_BALANCE_BELOW)
        if self.value() == "zero":
            return queryset.filter(balance=0)
        return queryset


@admin.register(TenantCreditBalance)
class TenantCreditBalanceAdmin(ViewOnlyMixin, FastModelAdmin):
    """One row per tenant, changed only by ledger writes."""

    list_display = (
        "tenant",
        "balance",
        "total_purchased",
        "total_consumed",
        "total_refunded",
        "total_bonus",
        "total_adjusted",
        "updated_at",
    )
    list_filter = (LowBalanceFilter,)
    list_select_related = ("tenant",)
    search_fields = ("tenant__name",)
    search_help_text = "Tenant name (substring)."
    ordering = ("tenant__name",)


@admin.register(CreditAlert)
class CreditAlertAdmin(ViewOnlyMixin, FastModelAdmin):
    """Low-credit alerts, written by the ledger services with the entry that raised them: read-only."""

    list_display = ("created_at", "tenant", "alert_type", "balance", "threshold", "entry_link")
    list_filter = (TenantFilter, "alert_type")
    list_select_related = ("tenant",)
    sortable_by = ()
    ordering = ("-created_at", "-pk")
    # idx_credit_alerts_tenant_created serves one tenant's alerts, newest first.
    indexed_orderings = ((("tenant",), ("-created_at",)),)

    @admin.display(description="ledger entry")
    def entry_link(self, obj: CreditAlert) -> str:
        return admin_change_link(CreditLedger, obj.ledger_entry_id)


# --- Platform costs ---------------------------------------------------------------------------------


@admin.register(PlatformCost)
class PlatformCostAdmin(FastModelAdmin):
    list_display = (
        "ad_id",
        "ad_name",
        "tenant",
        "offer",
        "platform",
        "date_start",
        "date_end",
        "spend",
        "impressions",
        "clicks",
        "leads_raw",
        "synced_at",
    )
    list_filter = (TenantFilter, "platform")
    list_select_related = ("tenant", "offer")
    search_fields = ("=ad_id", "=adset_id", "=campaign_id")
    search_help_text = "Ad, ad set or campaign id (exact)."
    autocomplete_fields = ("tenant", "offer")
    sortable_by = ()
    # Served backwards by idx_platform_costs_date.
    ordering = ("-date_start", "-date_end")
