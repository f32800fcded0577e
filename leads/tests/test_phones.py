"""Phone normalisation to E.164 (`leads.phones.normalize_phone`) and the database's E.164 CHECK.

What `phonenumbers` does with Argentine mobiles, pinned here because a lead is keyed by its phone:
- International form needs the mobile `9` after `+54` (`+54 9 11 2233 4455` → `+5491122334455`).
- The domestic mobile form `0 <area> 15 <number>` is rewritten to the same `+549…` number.
- Without the `9` (`+54 11 2233 4455`) the library reads a *fixed line*. Lead-ad phones are the
  person's mobile (reached on WhatsApp), so `normalize_phone` inserts the 9 whenever that yields a valid
  mobile: both spellings are one lead, `+5491122334455`.
"""

from __future__ import annotations

import re

import pytest
from django.db import IntegrityError, transaction

from converzia.errors import ErrorCode
from leads.errors import InvalidPhone
from leads.models import Lead
from leads.phones import normalize_phone

E164_CHECK = re.compile(r"^\+[1-9][0-9]{6,14}$")  # the regex of CHECK leads_phone_e164


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("+54 9 11 2233 4455", "+5491122334455", id="_case_international_mobile"),
        pytest.param("+5491122334455", "+5491122334455", id="_case_already_e164"),
        pytest.param("+54-9-11-2233-4455", "+5491122334455", id="_case_dashes"),
        pytest.param("0054 9 11 2233 4455", "+5491122334455", id="_case_00_prefix"),
        pytest.param("00 54 9 11 2233 4455", "+5491122334455", id="_case_00_prefix_spaced"),
        pytest.param("54 9 11 2233 4455", "+5491122334455", id="_case_country_code_without_plus"),
        pytest.param("011 15-2233-4455", "+5491122334455", id="_case_domestic_mobile_with_15"),
        pytest.param("(011) 15 2233-4455", "+5491122334455", id="_case_domestic_mobile_parenthesised"),
        pytest.param("11 15 2233 4455", "+5491122334455", id="_case_domestic_mobile_without_0"),
        pytest.param("9 11 2233 4455", "+5491122334455", id="_case_mobile_9_without_country"),
        pytest.param("0351 15 612 3456", "+5493516123456", id="_case_cordoba_mobile"),
        pytest.param("0054 9 351 612 3456", "+5493516123456", id="_case_cordoba_mobile_00"),
        pytest.param("  +54 9 11 2233 4455\n", "+5491122334455", id="_case_surrounding_whitespace"),
        pytest.param("+54 11 2233 4455", "+5491122334455", id="_case_without_9_gets_the_mobile_9"),
        pytest.param("011 2233-4455", "+5491122334455", id="_case_domestic_without_15"),
        pytest.param("(011) 4321-1234", "+5491143211234", id="_case_landline_shape_read_as_mobile"),
        pytest.param("+1 650 253 0000", "+16502530000", id="_case_foreign_number_with_plus"),
    ],
)
def test_normalize_phone_returns_e164(raw, expected):
    assert normalize_phone(raw) == expected
    assert E164_CHECK.match(expected)


def test_mobile_with_and_without_9_are_the_same_lead():
    assert normalize_phone("+54 9 11 2233 4455") == normalize_phone("+54 11 2233 4455")
    assert normalize_phone("011 15 2233 4455") == normalize_phone("+54 9 11 2233 4455")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("", "The phone number is empty.", id="_case_empty"),
        pytest.param("   ", "The phone number is empty.", id="_case_blank"),
        pytest.param(None, "The phone number is empty.", id="_case_none"),
        pytest.param("abc", None, id="_case_letters"),
        pytest.param("+999 1234567", None, id="_case_unknown_country_code"),
        pytest.param("12345", "The phone number is not a valid number.", id="_case_too_short"),
        pytest.param("+54 11", "The phone number is not a valid number.", id="_case_country_and_area_only"),
        pytest.param("2233-4455", "The phone number is not a valid number.", id="_case_no_area_code"),
        pytest.param("15-2233-4455", "The phone number is not a valid number.", id="_case_15_without_area"),
        pytest.param(
            "+54 9 11 2233 445", "The phone number is not a valid number.", id="_case_digit_missing"
        ),
        pytest.param(
            "+54 9 11 2233 44556", "The phone number is not a valid number.", id="_case_digit_extra"
        ),
        pytest.param(
            "650 253 0000", "The phone number is not a valid number.", id="_case_us_number_read_as_ar"
        ),
    ],
)
def test_normalize_phone_rejects(raw, message):
    with pytest.raises(InvalidPhone) as caught:
        normalize_phone(raw)
    assert (caught.value.code, caught.value.http_status) == (ErrorCode.INVALID_INPUT, 400)
    if message is None:
        assert caught.value.message.startswith("Unreadable phone number:")
    else:
        assert caught.value.message == message


def test_explicit_region_decides_how_a_national_number_is_read():
    assert normalize_phone("650 253 0000", region="US") == "+16502530000"
    assert normalize_phone("020 7946 0958", region="GB") == "+442079460958"
    with pytest.raises(InvalidPhone):
        normalize_phone("011 15-2233-4455", region="US")
    # A number with its country code ignores the region.
    assert normalize_phone("+54 9 11 2233 4455", region="US") == "+5491122334455"


def test_default_region_comes_from_settings(settings):
    settings.PHONE_DEFAULT_REGION = "US"
    assert normalize_phone("650 253 0000") == "+16502530000"
    with pytest.raises(InvalidPhone):
        normalize_phone("011 15-2233-4455")


@pytest.mark.django_db
def test_a_normalised_phone_satisfies_the_database_check():
    lead = Lead.objects.create(phone=normalize_phone("011 15-2233-4455"))
    assert Lead.objects.get(pk=lead.pk).phone == "+5491122334455"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "phone",
    [
        pytest.param("5491122334455", id="_case_no_plus"),
        pytest.param("+54 9 11 2233 4455", id="_case_spaces"),
        pytest.param("+054911223344", id="_case_leading_zero"),
        pytest.param("+12345", id="_case_too_short"),
        pytest.param("+1234567890123456", id="_case_too_long"),
        pytest.param("011 15-2233-4455", id="_case_national_format"),
        pytest.param("DELETED_1", id="_case_not_a_number"),
        pytest.param("", id="_case_empty"),
    ],
)
def test_database_rejects_a_non_e164_phone_inserted_directly(phone):
    with pytest.raises(IntegrityError) as caught:
        with transaction.atomic():
            Lead.objects.create(phone=phone)
    assert caught.value.__cause__.diag.constraint_name == "leads_phone_e164"
    assert Lead.objects.count() == 0
