"""Phone normalisation to E.164 with the `phonenumbers` library (the one rule for phones)."""

from __future__ import annotations

import phonenumbers
from django.conf import settings

from leads.errors import InvalidPhone


def normalize_phone(raw: str, *, region: str | None = None) -> str:
    """Return `raw` in E.164 (`+5491122334455`) or raise `InvalidPhone`.

    Numbers without a country prefix are read in `region` (default `PHONE_DEFAULT_REGION`).
    """
    candidate = (raw or "").strip()
    if not candidate:
        raise InvalidPhone("The phone number is empty.")
    if candidate.startswith("00"):
        candidate = "+" + candidate[2:]
    try:
        parsed = phonenumbers.parse(candidate, region or settings.PHONE_DEFAULT_REGION)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"Unreadable phone number: {exc}.") from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhone("The phone number is not a valid number.")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
