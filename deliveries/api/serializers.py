"""Serializers of the ops API: request validation (no business rules) and the lead_offer representation.

Input conventions (API.md "Ops"):
- Unknown body fields are refused (400 `invalid_input`, `{field: ["Unknown field."]}`), as unknown query
  parameters are: a typo such as `disqualification_categroy` must not be silently ignored.
- `score_total` must be a JSON integer: strings ("95"), booleans and fractions (90.5) are refused, not
  coerced: an ops client that sends the wrong type has a bug worth hearing about.
- `qualification_fields` and `score_breakdown` must be JSON objects of at most `JSON_OBJECT_MAX_KEYS`
  top-level keys and `JSON_OBJECT_MAX_BYTES` bytes once serialized (UTF-8), so one request cannot
  bloat a row that every delivery payload copies.
"""

from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers

from converzia.api.serializers import StrictInputSerializer
from deliveries.models import DeliveryBlockedReason, DeliveryStatus
from leads.models import BillingEligibility, DisqualificationCategory, LeadOfferStatus

JSON_OBJECT_MAX_KEYS = 64
JSON_OBJECT_MAX_BYTES = 16 * 1024
REASON_MAX_LENGTH = 2000


class StrictIntegerField(serializers.IntegerField):
    """An integer that must arrive as a JSON number without a fraction (no "95", no true, no 95.5)."""

    default_error_messages = {"invalid": "A JSON integer is required."}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        if isinstance(data, float) and not data.is_integer():
            self.fail("invalid")
        return super().to_internal_value(data)


class BoundedJSONObjectField(serializers.JSONField):
    """A JSON object (not a list or a scalar), bounded in keys and in serialized size."""

    default_error_messages = {
        "not_an_object": "A JSON object is required.",
        "too_many_keys": "At most {max_keys} keys are allowed.",
        "too_large": "At most {max_bytes} bytes (serialized) are allowed.",
    }

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            self.fail("not_an_object")
        if len(value) > JSON_OBJECT_MAX_KEYS:
            self.fail("too_many_keys", max_keys=JSON_OBJECT_MAX_KEYS)
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
        if size > JSON_OBJECT_MAX_BYTES:
            self.fail("too_large", max_bytes=JSON_OBJECT_MAX_BYTES)
        return value


class LeadOfferTransitionSerializer(StrictInputSerializer):
    to = serializers.ChoiceField(choices=LeadOfferStatus.choices, help_text="The target status.")
    reason = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=REASON_MAX_LENGTH,
        help_text="Why; recorded on the STATUS_CHANGE event (and as the disqualification reason).",
    )
    disqualification_category = serializers.ChoiceField(
        choices=DisqualificationCategory.choices,
        required=False,
        help_text="Only with `to` = DISQUALIFIED; defaults to OTHER there.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if "disqualification_category" in attrs and attrs["to"] != LeadOfferStatus.DISQUALIFIED:
            raise serializers.ValidationError(
                {"disqualification_category": ["Only allowed when `to` is DISQUALIFIED."]}
            )
        return attrs


class LeadOfferQualificationSerializer(StrictInputSerializer):
    score_total = StrictIntegerField(min_value=0, max_value=100, help_text="The total score, 0–100.")
    qualification_fields = BoundedJSONObjectField(
        required=False,
        help_text=(
            "Merged into the stored fields: keys sent replace the stored ones, others are kept. "
            f"At most {JSON_OBJECT_MAX_KEYS} keys and {JSON_OBJECT_MAX_BYTES} bytes."
        ),
    )
    score_breakdown = BoundedJSONObjectField(
        required=False,
        help_text=(
            "Per-dimension points; replaces the stored breakdown when sent. "
            f"At most {JSON_OBJECT_MAX_KEYS} keys and {JSON_OBJECT_MAX_BYTES} bytes."
        ),
    )


class BlankAsNullChoiceField(serializers.ChoiceField):
    """A choice column stored as '' when unset, answered as null (so clients test for null, not '')."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_null=True, **kwargs)

    def to_representation(self, value: Any) -> Any:
        return super().to_representation(value) if value else None


class LeadOfferDeliverySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=DeliveryStatus.choices)
    blocked_reason = BlankAsNullChoiceField(
        choices=DeliveryBlockedReason.choices, help_text="Why it waits; null when it does not."
    )
    attempt_count = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)


class LeadOfferSerializer(serializers.Serializer):
    """The lead_offer as the ops API answers it, with its delivery (null until it has one).

    Read the instance with `select_related("delivery")`: the delivery is then no extra query.
    """

    id = serializers.UUIDField()
    tenant_id = serializers.UUIDField()
    offer_id = serializers.UUIDField(allow_null=True, help_text="Null while the ad is unmapped.")
    status = serializers.ChoiceField(choices=LeadOfferStatus.choices)
    previous_status = BlankAsNullChoiceField(
        choices=LeadOfferStatus.choices, help_text="Null before the first change."
    )
    status_changed_at = serializers.DateTimeField()
    billing_eligibility = serializers.ChoiceField(choices=BillingEligibility.choices)
    score_total = serializers.IntegerField(allow_null=True)
    qualification_fields = serializers.DictField()
    score_breakdown = serializers.DictField()
    disqualification_category = BlankAsNullChoiceField(
        choices=DisqualificationCategory.choices, help_text="Null unless DISQUALIFIED."
    )
    disqualification_reason = serializers.CharField(help_text="Empty unless DISQUALIFIED with a reason.")
    updated_at = serializers.DateTimeField()
    # DRF answers null when the reverse one-to-one has no row.
    delivery = LeadOfferDeliverySerializer(allow_null=True, read_only=True)
