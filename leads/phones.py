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
    parsed = _argentine_mobile_form(parsed)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


_ARGENTINA = 54


def _argentine_mobile_form(parsed: phonenumbers.PhoneNumber) -> phonenumbers.PhoneNumber:
    """Argentine numbers written without the mobile `9` (`+54 11 2233 4455`) read as fixed lines.

    Lead-ad phones are the person's mobile (we reach them on WhatsApp, which needs `+549…`), and the
    same person typing the number with and without the 9 must be one lead, so the 9 is inserted
    whenever that yields a valid mobile number (v1's rule, done with the library's metadata).
    """
    if parsed.country_code != _ARGENTINA:
        return parsed
    if phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.MOBILE:
        return parsed
    national = phonenumbers.national_significant_number(parsed)
    mobile = phonenumbers.parse(f"+{_ARGENTINA}9{national}")
    if (
        phonenumbers.is_valid_number(mobile)
        and phonenumbers.number_type(mobile) == phonenumbers.PhoneNumberType.MOBILE
    ):
        return mobile
    return parsed
