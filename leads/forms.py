"""Forms of the staff admin for the leads domain (validation only; the writes are services)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from leads.errors import InvalidPhone
from leads.models import AdOfferMap, DisqualificationCategory, Lead, LeadOfferStatus
from leads.phones import normalize_phone


class LeadOfferTransitionForm(forms.Form):
    """Input of the "change status" action; `leads.services.lead_offer_transition` checks the move."""

    to_status = forms.ChoiceField(label="New status", choices=LeadOfferStatus.choices)
    reason = forms.CharField(
        required=False,
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Recorded on the STATUS_CHANGE event (and as the disqualification reason).",
    )
    disqualification_category = forms.ChoiceField(
        required=False,
        choices=[("", "—"), *DisqualificationCategory.choices],
        help_text="Only used when the new status is DISQUALIFIED (default OTHER).",
    )


class AdOfferMapAdminForm(forms.ModelForm):
    class Meta:
        model = AdOfferMap
        fields = (
            "tenant",
            "offer",
            "platform",
            "ad_id",
            "ad_name",
            "adset_id",
            "adset_name",
            "campaign_id",
            "campaign_name",
            "form_id",
            "is_active",
            "notes",
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        tenant, offer = cleaned.get("tenant"), cleaned.get("offer")
        if tenant is not None and offer is not None and offer.tenant_id != tenant.pk:
            # An ad routes to one tenant; its leads must not land in another tenant's offer.
            self.add_error("offer", "This offer belongs to another tenant.")
        return cleaned


class LeadAdminForm(forms.ModelForm):
    class Meta:
        model = Lead
        # Opt-out and contact timestamps are not edited by hand (they are read-only in the admin).
        fields = ("phone", "email", "first_name", "last_name", "full_name", "country_code", "language")

    def clean_phone(self) -> str:
        try:
            return normalize_phone(self.cleaned_data["phone"])
        except InvalidPhone as exc:
            raise ValidationError(exc.message) from None
