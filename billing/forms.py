"""Forms of the staff admin's credit and approval actions (validation only; the writes are services)."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError

# Reasons are required; CharField strips whitespace first, so a blank reason is refused too.
_REASON_WIDGET = forms.Textarea(attrs={"rows": 3})


class TenantRejectForm(forms.Form):
    reason = forms.CharField(
        max_length=2000,
        widget=_REASON_WIDGET,
        help_text="Stored on the tenant and on its revoked pending memberships.",
    )


class CreditPurchaseForm(forms.Form):
    """A paid purchase recorded by staff: a completed billing order and its ledger credit."""

    credits = forms.IntegerField(min_value=1)
    total = forms.DecimalField(
        min_value=Decimal("0"), max_digits=10, decimal_places=2, help_text="Amount paid."
    )
    currency = forms.CharField(max_length=3, initial="USD")
    package_name = forms.CharField(max_length=100, required=False, help_text="e.g. Starter, Growth, Scale.")
    payment_reference = forms.CharField(
        max_length=200, required=False, help_text="Receipt, transfer or payment provider id."
    )

    def clean_currency(self) -> str:
        currency = self.cleaned_data["currency"].strip().upper()
        if len(currency) != 3 or not currency.isalpha():
            raise ValidationError("Use a three-letter ISO currency code.")
        return currency


class CreditBonusForm(forms.Form):
    amount = forms.IntegerField(min_value=1, help_text="Credits to add.")
    reason = forms.CharField(max_length=2000, widget=_REASON_WIDGET)


class CreditAdjustmentForm(forms.Form):
    amount = forms.IntegerField(help_text="Signed: positive adds credits, negative removes them.")
    reason = forms.CharField(
        max_length=2000, widget=_REASON_WIDGET, help_text="Required: why the correction."
    )

    def clean_amount(self) -> int:
        amount = self.cleaned_data["amount"]
        if amount == 0:
            raise ValidationError("An adjustment must move at least one credit.")
        return amount
