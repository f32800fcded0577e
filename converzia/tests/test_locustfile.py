"""`locustfile.py` drives a real server without a single failure (a short headless run).

Locust monkey-patches the process with gevent on import, so it runs in its own process, never imported
here; the server is pytest-django's live server on the test database.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from conftest import issue_token
from converzia.models import TenantRole
from converzia.tests.factories import StaffUserFactory, TenantFactory, TenantMemberFactory
from leads.models import LeadOfferStatus as S
from leads.tests.factories import LeadOfferFactory, OfferFactory
from leads.tests.test_worker import clear_queue

pytestmark = pytest.mark.django_db(transaction=True)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def logins(tmp_path: Path) -> Path:
    """`seed_demo --json`'s shape: the staff login and two tenants' owners, each with a token."""
    tenants = []
    for _ in range(2):
        tenant = TenantFactory()
        owner = TenantMemberFactory(tenant=tenant, role=TenantRole.OWNER).user
        offer = OfferFactory(tenant=tenant)
        for status in (S.ENGAGED, S.LEAD_READY, S.SENT_TO_DEVELOPER) * 25:
            LeadOfferFactory(offer=offer, status=status)
        tenants.append(
            {"id": str(tenant.pk), "owner": {"email": owner.email, "api_token": issue_token(owner)}}
        )
    staff = StaffUserFactory()
    path = tmp_path / "logins.json"
    path.write_text(
        json.dumps({"staff": {"email": staff.email, "api_token": issue_token(staff)}, "tenants": tenants})
    )
    yield path
    clear_queue()  # the webhook POSTs queued processing jobs


def test_a_short_headless_run_of_every_user_class_has_no_failures(logins, live_server, tmp_path):
    env = {**os.environ, "LOCUST_LOGINS": str(logins), "META_APP_SECRET": settings.META_APP_SECRET}
    result = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless", "--host", live_server.url,
            "--users", "12", "--spawn-rate", "12", "--run-time", "8s", "--csv", str(tmp_path / "load"),
            "--only-summary", "--loglevel", "WARNING",
        ],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "load_stats.csv", newline="") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    total = rows.pop("Aggregated")
    assert int(total["Request Count"]) > 20
    assert int(total["Failure Count"]) == 0, (tmp_path / "load_failures.csv").read_text()
    # Every kind of user took part: tenants, staff, Meta and the probe.
    assert {"/api/portal/leads", "/api/portal/leads/stats", "/api/webhooks/meta-leads"} <= set(rows)
    assert {"/api/admin/revenue", "/api/admin/stats", "/api/admin/queue"} & set(rows)
    assert "/api/health/live" in rows


def test_the_webhook_user_signs_like_meta(client):
    """The body and signature the Meta user sends are accepted by the real endpoint."""
    code = (
        "import locustfile, sys; body = locustfile.meta_body(['900000000000123']);"
        "sys.stdout.write(locustfile.meta_signature(body, sys.argv[1]) + '\\n' + body.decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, settings.META_APP_SECRET],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    signature, body = out.split("\n", 1)

    response = client.post(
        "/api/webhooks/meta-leads",
        data=body,
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256=signature,
    )

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "accepted", "events": 1}
    clear_queue()
