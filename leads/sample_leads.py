"""Signed Meta test leads against a running server, and waiting for the worker to process them.

`manage.py send_test_lead` (`make test-lead` under `make run`) uses it to show a laptop the whole
path: webhook → inbox → Graph fetch (the local stand-in) → routing → lead_offer → the portal list.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import orjson

from leads.measure.payloads import leadgen_body
from leads.meta import signature_header
from leads.models import AdOfferMap, InboxChange, InboxChangeStatus

WEBHOOK_PATH = "/api/webhooks/meta-leads"
# Meta's ids are 15-16 digit numbers; a random one is a new person for the Graph stand-in.
_LEADGEN_FIRST = 10**15
_LEADGEN_SPAN = 9 * 10**15
SAMPLE_PAGE_ID = "990000000000001"


class SampleLeadError(RuntimeError):
    """The server refused or could not be reached; the message says which."""


@dataclass(frozen=True)
class SentSampleLeads:
    leadgen_ids: tuple[str, ...]
    status: int
    body: dict[str, object]


def new_leadgen_ids(count: int) -> tuple[str, ...]:
    return tuple(str(_LEADGEN_FIRST + secrets.randbelow(_LEADGEN_SPAN)) for _ in range(count))


def post_sample_leads(
    *, web_url: str, ad: AdOfferMap, count: int, secret: str, timeout_s: float = 10.0
) -> SentSampleLeads:
    """POST one signed leadgen event with `count` changes on `ad`, as Meta would."""
    leadgen_ids = new_leadgen_ids(count)
    raw = leadgen_body(
        page_id=SAMPLE_PAGE_ID,
        ad_id=ad.ad_id,
        form_id=ad.form_id or "990000000000003",
        leadgen_ids=leadgen_ids,
        created_time=int(time.time()),
    )
    url = web_url.rstrip("/") + WEBHOOK_PATH
    try:
        response = httpx.post(
            url,
            content=raw,
            headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": signature_header(raw, secret),
            },
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise SampleLeadError(f"POST {url} failed: {exc.__class__.__name__}: {exc}") from None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = {"raw": response.text[:500]}
    if response.status_code != 200:
        raise SampleLeadError(f"POST {url} answered {response.status_code}: {body}")
    return SentSampleLeads(leadgen_ids=leadgen_ids, status=response.status_code, body=body)


def wait_for_changes(leadgen_ids: Sequence[str], *, timeout_s: float) -> list[InboxChange]:
    """The inbox changes for `leadgen_ids` once none is PENDING, or as they stand at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        changes = list(
            InboxChange.objects.filter(leadgen_id__in=list(leadgen_ids))
            .select_related("lead_offer", "lead_offer__offer", "tenant")
            .order_by("id")
        )
        settled = len(changes) >= len(leadgen_ids) and all(
            change.status != InboxChangeStatus.PENDING for change in changes
        )
        if settled or time.monotonic() >= deadline:
            return changes
        time.sleep(0.1)
