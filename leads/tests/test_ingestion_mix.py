"""TARGETS.md reliability 1, at test scale: a realistic mix of Meta traffic through the real webhook and
the real job — replays, bad signatures, malformed bodies, batches — loses nothing and doubles nothing.

(`manage.py measure_ingestion` runs the same mix at 10,000 events against a running server.)
"""

from __future__ import annotations

import json
import random
import re

import pytest
from django.db import connection
from django.db.models import Count
from django.test import Client
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from leads.ingestion import inbox_event_process
from leads.meta import signature_header
from leads.models import InboxChange, InboxChangeStatus, InboxEvent, Lead, LeadOffer, LeadSource
from leads.tests.factories import AdOfferMapFactory, OfferFactory

pytestmark = pytest.mark.django_db

SECRET = "mix-secret"
TOKEN = "mix-token"
URL = "/api/webhooks/meta-leads"
EVENTS = 200


def phone_for(leadgen_id: str) -> str:
    return f"+54911{int(leadgen_id) % 100_000_000:08d}"


def graph_answer(request: Request) -> Response:
    leadgen_id = request.path.lstrip("/")
    body = {
        "id": leadgen_id,
        "field_data": [
            {"name": "full_name", "values": [f"Lead {leadgen_id}"]},
            {"name": "phone_number", "values": [phone_for(leadgen_id)]},
        ],
    }
    return Response(json.dumps(body), content_type="application/json")


def body_of(leadgen_ids: list[str], ad_id: str) -> bytes:
    changes = [
        {
            "field": "leadgen",
            "value": {"leadgen_id": int(lid), "ad_id": ad_id, "form_id": "1", "page_id": "1"},
        }
        for lid in leadgen_ids
    ]
    return json.dumps({"object": "page", "entry": [{"id": "1", "time": 1, "changes": changes}]}).encode()


def test_a_mixed_stream_of_meta_traffic_loses_nothing_and_doubles_nothing(settings, httpserver: HTTPServer):
    settings.META_APP_SECRET = SECRET
    settings.META_PAGE_ACCESS_TOKEN = TOKEN
    settings.META_GRAPH_URL = httpserver.url_for("")
    httpserver.expect_request(re.compile(r"^/\d+$")).respond_with_handler(graph_answer)
    offer = OfferFactory()
    mapping = AdOfferMapFactory(tenant=offer.tenant, offer=offer)
    rng = random.Random(20261129)
    client = Client(HTTP_HOST="localhost")

    sent: list[bytes] = []
    expected_leadgens: set[str] = set()
    outcomes = {"accepted": 0, "replayed": 0, "bad_signature": 0, "malformed": 0}
    next_id = 100_000_000_000
    for _ in range(EVENTS):
        roll = rng.random()
        if roll < 0.05:
            body = body_of([str(next_id)], mapping.ad_id)
            response = client.post(
                URL,
                body,
                content_type="application/json",
                HTTP_X_HUB_SIGNATURE_256=signature_header(body, "x"),
            )
            assert response.status_code == 403
            outcomes["bad_signature"] += 1
            continue
        if roll < 0.07:
            body = b'{"object": "page", "entry": [{"changes": [{"field": "leadgen", "value": {}}]}]}'
            response = client.post(
                URL,
                body,
                content_type="application/json",
                HTTP_X_HUB_SIGNATURE_256=signature_header(body, SECRET),
            )
            assert response.status_code == 400
            outcomes["malformed"] += 1
            continue
        if roll < 0.17 and sent:
            body = rng.choice(sent)  # Meta retrying a delivery it thinks failed
            outcomes["replayed"] += 1
        else:
            size = rng.choice([1] * 8 + [rng.randint(2, 10), 30])
            leadgen_ids = [str(next_id + i) for i in range(size)]
            next_id += size
            expected_leadgens.update(leadgen_ids)
            body = body_of(leadgen_ids, mapping.ad_id)
            sent.append(body)
            outcomes["accepted"] += 1
        response = client.post(
            URL,
            body,
            content_type="application/json",
            HTTP_X_HUB_SIGNATURE_256=signature_header(body, SECRET),
        )
        assert response.status_code == 200, response.content

    for event_id in InboxEvent.objects.order_by("pk").values_list("pk", flat=True):
        inbox_event_process(event_id)

    assert outcomes["bad_signature"] > 0 and outcomes["malformed"] > 0 and outcomes["replayed"] > 0
    # 0 lost: every distinct leadgen became exactly one source and one lead_offer.
    sources = set(LeadSource.objects.values_list("leadgen_id", flat=True))
    assert sources == expected_leadgens
    assert LeadSource.objects.count() == len(expected_leadgens)
    assert LeadOffer.objects.count() == len(expected_leadgens) == Lead.objects.count()
    # Every stored change is settled; replays created nothing.
    statuses = dict(InboxChange.objects.values_list("status").annotate(n=Count("pk")))
    assert set(statuses) <= {InboxChangeStatus.PROCESSED, InboxChangeStatus.REPLAY}
    assert statuses[InboxChangeStatus.PROCESSED] == len(expected_leadgens)
    # Bad signatures and malformed bodies stored nothing: events = accepted + replayed POSTs.
    assert InboxEvent.objects.count() == outcomes["accepted"] + outcomes["replayed"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM lead_offers GROUP BY lead_id HAVING count(*) > 1")
        assert cursor.fetchall() == []
