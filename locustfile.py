"""Load scenario for `make load`: the portal's tenants, Converzia staff and Meta's webhook, weighted.

    python manage.py seed_demo --json > reports/logins.json        # tokens for the demo logins
    LOCUST_LOGINS=reports/logins.json META_APP_SECRET=… make load LOAD_HOST=http://127.0.0.1:8000

Without `LOCUST_LOGINS` the newest `.data/demo-*.json` that `make run` wrote is used. Users whose
credentials are missing stay out of the run: tenants and staff need the logins file, Meta needs
`META_APP_SECRET` (the server's). A monitoring probe always runs. Reports: `reports/load_*.csv` and
`reports/load.html` (docs/performance.md).

Weights (per 12 users): 8 tenant users browsing their portal, 2 Meta webhook senders, 1 staff user,
1 monitoring probe. Tenants poll their dashboard with `If-None-Match`, as the portal's front end does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
import json
import os
import random
import time
from pathlib import Path
from typing import Any

from locust import HttpUser, between, task

LIVENESS_PATH = "/api/health/live"
WEBHOOK_PATH = "/api/webhooks/meta-leads"
SURNAMES = ("garcía", "pereyra", "luna", "gómez", "sosa", "ríos", "molina", "acosta")
LEAD_FILTERS: tuple[dict[str, str], ...] = (
    {},
    {},
    {"status": "LEAD_READY"},
    {"status": "SENT_TO_DEVELOPER,DISQUALIFIED"},
    {"stage": "in_chat"},
    {"stage": "qualified"},
)


def _logins_path() -> Path | None:
    configured = os.environ.get("LOCUST_LOGINS")
    if configured:
        return Path(configured)
    candidates = sorted(Path(".data").glob("demo-*.json"), key=lambda path: path.stat().st_mtime)
    return candidates[-1] if candidates else None


def load_logins() -> dict[str, Any]:
    """`seed_demo --json`'s output: the staff login and the tenants' owners, with API tokens."""
    path = _logins_path()
    if path is None or not path.exists():
        return {"staff": None, "tenants": []}
    logins = json.loads(path.read_text())
    tenants = [t for t in logins.get("tenants", []) if (t.get("owner") or {}).get("api_token")]
    staff = logins.get("staff") if (logins.get("staff") or {}).get("api_token") else None
    return {"staff": staff, "tenants": tenants}


LOGINS = load_logins()
META_APP_SECRET = os.environ.get("META_APP_SECRET", "")
_tenant_turns = itertools.cycle(LOGINS["tenants"] or [None])
_leadgen_numbers = itertools.count(int(time.time() * 1000) % 10**12 * 1000)


def _ok(response: Any) -> None:
    """Anything but a 2xx or a 304 is a failure, with the error code of the body when there is one."""
    if response.status_code in (200, 201, 304):
        response.success()
        return
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = ""
    response.failure(f"{response.status_code} {code}".strip())


class TenantUser(HttpUser):
    """A tenant's staff member in the portal: the lead list with filters and paging, a lead, the
    dashboard (stats and funnel, polled with ETags), offers, billing, now and then a search."""

    weight = 8
    wait_time = between(1, 3)
    abstract = not LOGINS["tenants"]

    def on_start(self) -> None:
        login = next(_tenant_turns)
        self.client.headers["Authorization"] = f"Bearer {login['owner']['api_token']}"
        self.lead_ids: list[str] = []
        self.etags: dict[str, str] = {}

    def _get(self, path: str, *, name: str | None = None, params: dict[str, Any] | None = None) -> Any:
        with self.client.get(path, params=params, name=name or path, catch_response=True) as response:
            _ok(response)
            return response

    @task(5)
    def browse_leads(self) -> None:
        params = {"page_size": 50, **random.choice(LEAD_FILTERS)}
        response = self._get("/api/portal/leads", params=params)
        # A few pages deeper, as someone scrolling does.
        for _ in range(random.randint(0, 3)):
            if response.status_code != 200:
                return
            body = response.json()
            self.lead_ids = [item["id"] for item in body["results"]][:20] or self.lead_ids
            if not body.get("next"):
                return
            response = self._get(body["next"], name="/api/portal/leads?cursor=[next]")

    @task(3)
    def lead_detail(self) -> None:
        if self.lead_ids:
            self._get(f"/api/portal/leads/{random.choice(self.lead_ids)}", name="/api/portal/leads/[id]")

    @task(4)
    def dashboard(self) -> None:
        """The dashboard polls stats and the 30-day funnel, revalidating with the last ETag."""
        today = dt.datetime.now(dt.UTC).date()
        for path, params in (
            ("/api/portal/leads/stats", None),
            ("/api/portal/funnel", {"created_from": (today - dt.timedelta(days=29)).isoformat()}),
        ):
            headers = {"If-None-Match": self.etags[path]} if path in self.etags else {}
            with self.client.get(path, params=params, headers=headers, name=path, catch_response=True) as r:
                _ok(r)
                if r.headers.get("ETag"):
                    self.etags[path] = r.headers["ETag"]

    @task(1)
    def offers(self) -> None:
        self._get("/api/portal/offers")

    @task(1)
    def billing(self) -> None:
        self._get("/api/portal/billing/balance")
        self._get("/api/portal/billing/ledger")

    @task(1)
    def search(self) -> None:
        self._get("/api/portal/leads", params={"q": random.choice(SURNAMES)}, name="/api/portal/leads?q=")


class StaffUser(HttpUser):
    """Converzia staff on the platform dashboards: revenue, stats, the queue."""

    weight = 1
    wait_time = between(2, 5)
    abstract = LOGINS["staff"] is None

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {LOGINS['staff']['api_token']}"

    @task(2)
    def revenue(self) -> None:
        with self.client.get("/api/admin/revenue", catch_response=True) as response:
            _ok(response)

    @task(2)
    def platform_stats(self) -> None:
        with self.client.get("/api/admin/stats", catch_response=True) as response:
            _ok(response)

    @task(1)
    def queue(self) -> None:
        with self.client.get("/api/admin/queue", catch_response=True) as response:
            _ok(response)


def meta_body(leadgen_ids: list[str], *, page_id: str = "100200300400500", now: int | None = None) -> bytes:
    """A leadgen notification in Meta's shape (API.md "Webhooks"), one change per lead."""
    now = now or int(time.time())
    changes = [
        {
            "field": "leadgen",
            "value": {
                "leadgen_id": leadgen_id,
                "page_id": page_id,
                "form_id": "880011223344556",
                "ad_id": "120200000000" + leadgen_id[-3:],
                "adgroup_id": "120210000000001",
                "created_time": now,
            },
        }
        for leadgen_id in leadgen_ids
    ]
    return json.dumps(
        {"object": "page", "entry": [{"id": page_id, "time": now, "changes": changes}]}
    ).encode()


def meta_signature(body: bytes, secret: str) -> str:
    """`X-Hub-Signature-256`: the HMAC-SHA256 of the raw body keyed by the app secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class MetaWebhook(HttpUser):
    """Meta delivering lead notifications: mostly one change per POST, sometimes a batch of up to 50,
    and about one in ten a retry of something already sent (Meta retries until it sees a 200)."""

    weight = 2
    wait_time = between(0.5, 2)
    abstract = not META_APP_SECRET

    def on_start(self) -> None:
        self.sent: list[str] = []

    @task
    def notify(self) -> None:
        if self.sent and random.random() < 0.1:
            leadgen_ids = [random.choice(self.sent)]
            name = f"{WEBHOOK_PATH} (retry)"
        else:
            count = 1 if random.random() < 0.9 else random.randint(2, 50)
            leadgen_ids = [str(next(_leadgen_numbers)) for _ in range(count)]
            name = WEBHOOK_PATH if count == 1 else f"{WEBHOOK_PATH} (batch)"
        body = meta_body(leadgen_ids)
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": meta_signature(body, META_APP_SECRET),
        }
        with self.client.post(WEBHOOK_PATH, data=body, headers=headers, name=name, catch_response=True) as r:
            _ok(r)
            if r.status_code == 200:
                self.sent = (self.sent + leadgen_ids)[-200:]


class LivenessProbeUser(HttpUser):
    """A monitoring client: checks liveness about once a second and insists on a 200."""

    weight = 1
    wait_time = between(0.5, 1.5)

    @task
    def liveness(self) -> None:
        with self.client.get(LIVENESS_PATH, catch_response=True) as response:
            _ok(response)
