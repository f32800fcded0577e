"""Send signed Meta test leads to a running server and follow them until they are leads.

    manage.py send_test_lead [--url http://127.0.0.1:8000] [--tenant SLUG] [--ad-id ID] [--count N]
                             [--wait SECONDS] [--portal-token TOKEN] [--json]

Under `make run`, `make test-lead` runs it against the stack with the demo tenant's token. It POSTs one
webhook event signed with META_APP_SECRET (a development default under local settings) on an active ad
of the tenant whose offer is ACTIVE, then waits until the worker has fetched each lead from Graph (the
local stand-in `make run` starts) and routed it, and, given a portal token, until the tenant's
`GET /api/portal/leads` lists it. Exit status 1 when anything is refused, parked or late.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from converzia.management.base import ConverziaCommand
from converzia.models import Tenant, TenantStatus
from leads.models import AdOfferMap, InboxChangeStatus
from leads.sample_leads import SampleLeadError, post_sample_leads, wait_for_changes
from leads.selectors import routable_meta_ad

MAX_COUNT = 100


def _count(value: str) -> int:
    number = int(value)
    if not 1 <= number <= MAX_COUNT:
        raise ValueError(value)
    return number


class Command(ConverziaCommand):
    help = __doc__.split("\n\n")[0]

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="The running web server.")
        self.add_tenant_argument(parser)
        parser.add_argument(
            "--ad-id", help="The mapped ad to post on (default: the tenant's first routable)."
        )
        parser.add_argument("--count", type=_count, default=1, help=f"Leads in the event (1-{MAX_COUNT}).")
        parser.add_argument(
            "--wait", type=float, default=10.0, help="Seconds to wait for processing (0: do not wait)."
        )
        parser.add_argument(
            "--portal-token", help="A tenant member's bearer token: also wait until the portal lists them."
        )
        parser.add_argument("--json", action="store_true", help="Print the outcome as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        secret = settings.META_APP_SECRET
        if not secret:
            raise CommandError(
                "META_APP_SECRET is not set: the server refuses unsigned events. Set it for both the "
                "server and this command (local settings default to a development secret)."
            )
        if options["wait"] < 0:
            raise CommandError("--wait must be 0 or more seconds.")
        ad = self._ad(options)
        try:
            sent = post_sample_leads(web_url=options["url"], ad=ad, count=options["count"], secret=secret)
        except SampleLeadError as exc:
            raise CommandError(str(exc)) from None
        outcome: dict[str, Any] = {
            "tenant": {"id": str(ad.tenant_id), "slug": ad.tenant.slug},
            "ad_id": ad.ad_id,
            "offer": {"id": str(ad.offer_id), "name": ad.offer.name if ad.offer else None},
            "leadgen_ids": list(sent.leadgen_ids),
            "webhook": sent.body,
        }
        self._say(options, f"POST /api/webhooks/meta-leads → {sent.status} {json.dumps(sent.body)}")
        self._say(options, f"leadgen ids {', '.join(sent.leadgen_ids)} on ad {ad.ad_id} ({ad.tenant.slug})")
        if options["wait"] == 0:
            self._finish(options, outcome)
            return
        started = time.monotonic()
        changes = wait_for_changes(sent.leadgen_ids, timeout_s=options["wait"])
        outcome["changes"] = [
            {
                "leadgen_id": change.leadgen_id,
                "status": change.status,
                "lead_offer_id": str(change.lead_offer_id) if change.lead_offer_id else None,
                "lead_offer_status": change.lead_offer.status if change.lead_offer else None,
                "last_error": change.last_error,
            }
            for change in changes
        ]
        processed = [change for change in changes if change.status == InboxChangeStatus.PROCESSED]
        outcome["processed_after_s"] = round(time.monotonic() - started, 2)
        for change in changes:
            detail = (
                f"lead_offer {change.lead_offer_id} ({change.lead_offer.status})" if change.lead_offer else ""
            )
            self._say(
                options, f"  {change.leadgen_id}: {change.status} {detail} {change.last_error}".rstrip()
            )
        if len(processed) != len(sent.leadgen_ids):
            self._finish(options, outcome)
            raise CommandError(
                f"{len(processed)} of {len(sent.leadgen_ids)} lead(s) processed within {options['wait']:g} s "
                "(is the worker running? `make run` starts one; parked changes show in the admin's inbox)."
            )
        if options["portal_token"]:
            lead_offer_ids = {str(change.lead_offer_id) for change in processed}
            remaining = max(options["wait"] - (time.monotonic() - started), 1.0)
            outcome["portal_listed_after_s"] = self._wait_listed(
                options, ad, lead_offer_ids, remaining, started
            )
        self._finish(options, outcome)

    def _ad(self, options: dict[str, Any]) -> AdOfferMap:
        tenant = self.get_tenant(options)
        if options["ad_id"]:
            ad = AdOfferMap.objects.select_related("offer", "tenant").filter(ad_id=options["ad_id"]).first()
            if ad is None:
                raise CommandError(f"No ad mapping with ad id {options['ad_id']!r}.")
            if tenant is not None and ad.tenant_id != tenant.pk:
                raise CommandError(f"Ad {ad.ad_id} belongs to another tenant than {tenant.slug}.")
            return ad
        tenants = (
            [tenant] if tenant else Tenant.objects.filter(status=TenantStatus.ACTIVE).order_by("created_at")
        )
        for candidate in tenants:
            ad = routable_meta_ad(candidate)
            if ad is not None:
                ad.tenant = candidate
                return ad
        where = f"tenant {tenant.slug}" if tenant else "any ACTIVE tenant"
        raise CommandError(
            f"No active Meta ad mapped to an ACTIVE offer for {where}: map one in the admin "
            "(Ad mappings) or seed the demo (`manage.py seed_demo`)."
        )

    def _wait_listed(
        self,
        options: dict[str, Any],
        ad: AdOfferMap,
        lead_offer_ids: set[str],
        timeout_s: float,
        started: float,
    ) -> float:
        url = options["url"].rstrip("/") + "/api/portal/leads"
        headers = {"Authorization": f"Bearer {options['portal_token']}", "X-Tenant-ID": str(ad.tenant_id)}
        deadline = time.monotonic() + timeout_s
        while True:
            response = httpx.get(url, headers=headers, params={"page_size": 100}, timeout=10.0)
            if response.status_code != 200:
                raise CommandError(f"GET {url} answered {response.status_code}: {response.text[:300]}")
            listed = {row["id"] for row in response.json()["results"]}
            if lead_offer_ids <= listed:
                seconds = round(time.monotonic() - started, 2)
                self._say(
                    options, f"the portal lists them: GET /api/portal/leads ({seconds} s after the POST)"
                )
                return seconds
            if time.monotonic() >= deadline:
                raise CommandError(f"GET /api/portal/leads does not list {sorted(lead_offer_ids - listed)}.")
            time.sleep(0.2)

    def _say(self, options: dict[str, Any], line: str) -> None:
        if not options["json"]:
            self.stdout.write(line)

    def _finish(self, options: dict[str, Any], outcome: dict[str, Any]) -> None:
        if options["json"]:
            self.stdout.write(json.dumps(outcome, indent=2))
