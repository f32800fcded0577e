"""The one rule for who sees a lead's PII (API.md "Roles"; DOMAIN.md §10.2: visibility lives in code).

A lead's name, phone and email are shown for delivered lead_offers (SENT_TO_DEVELOPER: the tenant has
paid for them and already holds them) or when the caller's role has `view_lead_details` (staff always).
Otherwise the name reads `Lead #<first 8 of the lead_offer id>` and phone/email are masked
(`+54911******55`, `a***@example.com`). The portal list and detail both go through `lead_contact`
and `redact_pii`, and the list's `q` search only looks at PII the caller could see
(`pii_visible_q`), so a search cannot be used as an oracle for hidden leads.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from django.db.models import Q

from leads.models import LeadOfferStatus

PII_VISIBLE_STATUSES: frozenset[str] = frozenset({LeadOfferStatus.SENT_TO_DEVELOPER})

# Keys that hold PII in free-form JSON (qualification_fields, event details), lower-cased.
_NAME_KEYS = frozenset({"name", "full_name", "first_name", "last_name", "nombre", "apellido"})
_PHONE_KEYS = frozenset({"phone", "phone_number", "telefono", "whatsapp", "mobile"})
_EMAIL_KEYS = frozenset({"email", "e_mail", "correo"})
# Dropped outright when hidden: no useful masked form.
_DROP_KEYS = frozenset({"dni", "document", "document_number", "address", "direccion"})


def pii_visible(*, status: str, can_view_details: bool) -> bool:
    return can_view_details or status in PII_VISIBLE_STATUSES


def pii_visible_q(*, can_view_details: bool, status_field: str = "status") -> Q:
    """The lead_offers whose PII the caller may see, as a filter (everything when it may see all)."""
    if can_view_details:
        return Q()
    return Q(**{f"{status_field}__in": sorted(PII_VISIBLE_STATUSES)})


def hidden_name(lead_offer_id: uuid.UUID | str) -> str:
    return f"Lead #{str(lead_offer_id)[:8]}"


def mask_phone(phone: str | None) -> str | None:
    """`+5491122334455` → `+54911******55`: country and area prefix kept, subscriber digits hidden."""
    if not phone:
        return None
    keep_head = 6 if len(phone) > 10 else 0
    hidden = max(len(phone) - keep_head - 2, 0)
    return phone[:keep_head] + "*" * hidden + phone[keep_head + hidden :]


def mask_email(email: str | None) -> str | None:
    """`ana.perez@example.com` → `a***@example.com`."""
    if not email:
        return None
    local, at, domain = email.partition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def lead_contact(
    *,
    lead_offer_id: uuid.UUID | str,
    status: str,
    can_view_details: bool,
    full_name: str | None,
    first_name: str | None,
    last_name: str | None,
    phone: str | None,
    email: str | None,
) -> dict[str, str | None]:
    """`{"display_name", "phone", "email"}` of a lead_offer's lead, as this caller may see it."""
    if not pii_visible(status=status, can_view_details=can_view_details):
        return {
            "display_name": hidden_name(lead_offer_id),
            "phone": mask_phone(phone),
            "email": mask_email(email),
        }
    name = (full_name or "").strip() or f"{first_name or ''} {last_name or ''}".strip()
    return {
        "display_name": name or hidden_name(lead_offer_id),
        "phone": phone or None,
        "email": email or None,
    }


def redact_pii(data: Any, *, lead_offer_id: uuid.UUID | str, visible: bool) -> Any:
    """`data` (a JSON value) with name/phone/email-like keys masked and ID-like keys dropped, at any
    depth, unless `visible`. For qualification_fields and event details."""
    if visible:
        return data
    if isinstance(data, Mapping):
        redacted: dict[str, Any] = {}
        for key, value in data.items():
            lowered = str(key).lower()
            if lowered in _DROP_KEYS:
                continue
            if lowered in _NAME_KEYS:
                redacted[key] = hidden_name(lead_offer_id) if value else value
            elif lowered in _PHONE_KEYS:
                redacted[key] = mask_phone(value) if isinstance(value, str) else None
            elif lowered in _EMAIL_KEYS:
                redacted[key] = mask_email(value) if isinstance(value, str) else None
            else:
                redacted[key] = redact_pii(value, lead_offer_id=lead_offer_id, visible=False)
        return redacted
    if isinstance(data, list):
        return [redact_pii(item, lead_offer_id=lead_offer_id, visible=False) for item in data]
    return data
