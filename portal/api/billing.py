"""The tenant's credits (API.md "Portal": `/api/portal/billing/balance` and `/api/portal/billing/ledger`).

Both need `view_billing` (OWNER, ADMIN, BILLING, VIEWER; DOMAIN.md §2.3). Staff may read any tenant
by naming it with X-Tenant-ID. Money renders as a decimal string ("10.00"), like every decimal field of
the API, so it never passes through a float.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing.models import CreditLedger, CreditTransactionType
from billing.selectors import LEDGER_PAGE, balance_summary_get
from converzia.api.base import TenantApiView, TenantViewSet
from converzia.api.serializers import ChoiceListField
from converzia.tenancy import Permission


class BillingBalanceView(TenantApiView):
    """The tenant's credit balance, running totals and price per delivered lead.

    One total per ledger transaction type, so the balance reconciles from the body alone:
    `balance = total_purchased - total_consumed + total_refunded + total_bonus + total_adjusted`.
    """

    required_permission = Permission.VIEW_BILLING

    class OutputSerializer(serializers.Serializer):
        balance = serializers.IntegerField(
            help_text=(
                "Credits available now. Always equals total_purchased - total_consumed + total_refunded"
                " + total_bonus + total_adjusted (and the sum of every ledger amount)."
            )
        )
        low_credit_threshold = serializers.IntegerField(
            help_text="A low-credit alert is raised when the balance falls below this."
        )
        total_purchased = serializers.IntegerField(help_text="Credits bought, ever (CREDIT_PURCHASE).")
        total_consumed = serializers.IntegerField(
            help_text=(
                "Credits charged for delivered leads, ever (CREDIT_CONSUMPTION), as a positive count:"
                " subtract it."
            )
        )
        total_refunded = serializers.IntegerField(
            help_text="Credits given back for refunded deliveries, ever (CREDIT_REFUND)."
        )
        total_bonus = serializers.IntegerField(
            help_text=(
                "Free credits, ever (CREDIT_BONUS): bonuses and the one-time trial credits, which are a"
                ' CREDIT_BONUS ledger entry described "Trial credits".'
            )
        )
        total_adjusted = serializers.IntegerField(
            help_text=(
                "Net staff corrections, ever (CREDIT_ADJUSTMENT, signed): negative when more credits"
                " were removed than added."
            )
        )
        cost_per_lead = serializers.DecimalField(
            max_digits=10, decimal_places=2, help_text="Price of one delivered lead, as a decimal string."
        )
        currency = serializers.CharField(help_text="ISO 4217 code of `cost_per_lead`.")

    @extend_schema(responses=OutputSerializer, tags=["portal"])
    def get(self, request: Request) -> Response:
        summary = balance_summary_get(tenant=self.tenant)
        return Response(self.OutputSerializer(summary).data)


class BillingLedgerViewSet(TenantViewSet):
    """The tenant's credit ledger, newest first, keyset-paginated."""

    queryset = CreditLedger.objects.none()
    required_permission = Permission.VIEW_BILLING
    allowed_query_params = {"list": {"transaction_type"}}
    keyset_ordering = ("-created_at", "-id")

    class FilterSerializer(serializers.Serializer):
        transaction_type = ChoiceListField(
            choices=CreditTransactionType.choices,
            required=False,
            help_text="One or more transaction types (repeat the parameter or separate with commas).",
        )

    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        transaction_type = serializers.ChoiceField(choices=CreditTransactionType.choices)
        amount = serializers.IntegerField(help_text="Signed: + adds credits, − removes them.")
        balance_after = serializers.IntegerField(help_text="The balance right after this entry.")
        description = serializers.CharField()
        delivery_id = serializers.UUIDField(
            allow_null=True, help_text="The charged or refunded delivery, if any."
        )
        lead_offer_id = serializers.UUIDField(allow_null=True, help_text="Its lead, for charges and refunds.")
        created_at = serializers.DateTimeField()

    @extend_schema(parameters=[FilterSerializer], responses=OutputSerializer(many=True), tags=["portal"])
    def list(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        types = filters.validated_data.get("transaction_type")
        # Dicts of exactly the OutputSerializer's fields and types, rendered as they are (the
        # serializer documents them; a test holds the bytes equal).
        page = self.paginate_prepared(
            LEDGER_PAGE, CreditLedger, tenant_id=self.tenant.pk, transaction_types=types
        )
        return self.get_paginated_response(page)


billing_balance_view = BillingBalanceView.as_view()
billing_ledger_view = BillingLedgerViewSet.as_view({"get": "list"})
