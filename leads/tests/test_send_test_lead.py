"""`manage.py send_test_lead` (`make test-lead`): a signed Meta lead from the webhook to the portal list,
through a real worker and the local Graph stand-in, and every way it refuses or reports a failure."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from conftest import issue_token
from converzia.devstack_servers import find_free_port
from converzia.models import TenantRole, TenantStatus
from converzia.tests.factories import TenantMemberFactory
from leads.models import InboxChange, InboxChangeStatus, LeadOffer, OfferStatus
from leads.selectors import routable_meta_ad
from leads.tests.factories import AdOfferMapFactory, OfferFactory
from leads.tests.test_worker import graph, start_worker  # noqa: F401 — fixtures used by name

# The worker on a loaded 2-core box takes a while to import Django; the lead itself takes well under 1 s.
WAIT_S = "20"


def send(*args: str) -> str:
    out = StringIO()
    call_command("send_test_lead", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_the_lead_is_fetched_routed_and_listed_in_the_portal(live_server, request):
    ad = AdOfferMapFactory()
    token = issue_token(TenantMemberFactory(tenant=ad.tenant, role=TenantRole.VIEWER).user)
    request.getfixturevalue("start_worker")().wait_listening()

    out = StringIO()
    call_command(
        "send_test_lead",
        "--url", live_server.url,
        "--tenant", ad.tenant.slug,
        "--portal-token", token,
        "--wait", WAIT_S,
        "--json",
        stdout=out,
    )  # fmt: skip

    outcome = json.loads(out.getvalue())
    [change] = outcome["changes"]
    assert change["status"] == InboxChangeStatus.PROCESSED
    lead_offer = LeadOffer.objects.get(pk=change["lead_offer_id"])
    assert (lead_offer.tenant_id, lead_offer.offer_id) == (ad.tenant_id, ad.offer_id)
    assert outcome["ad_id"] == ad.ad_id and outcome["webhook"] == {"status": "accepted", "events": 1}
    assert outcome["portal_listed_after_s"] <= float(WAIT_S)


@pytest.mark.django_db(transaction=True)
def test_several_leads_in_one_event_without_waiting(live_server):
    ad = AdOfferMapFactory()

    printed = send("--url", live_server.url, "--ad-id", ad.ad_id, "--count", "3", "--wait", "0")

    assert "→ 200" in printed
    changes = InboxChange.objects.filter(ad_id=ad.ad_id)
    assert changes.count() == 3 and {c.status for c in changes} == {InboxChangeStatus.PENDING}
    assert len({c.leadgen_id for c in changes}) == 3


@pytest.mark.django_db(transaction=True)
def test_no_worker_is_a_failure_that_says_what_to_check(live_server):
    ad = AdOfferMapFactory()

    with pytest.raises(
        CommandError, match=r"0 of 1 lead\(s\) processed within 0.5 s \(is the worker running"
    ):
        send("--url", live_server.url, "--ad-id", ad.ad_id, "--wait", "0.5")


@pytest.mark.django_db
def test_the_routable_ad_is_the_tenants_oldest_active_one_on_an_active_offer():
    ad = AdOfferMapFactory()
    tenant = ad.tenant
    AdOfferMapFactory(tenant=tenant, offer=OfferFactory(tenant=tenant, status=OfferStatus.PAUSED))
    AdOfferMapFactory(tenant=tenant, offer=None)
    AdOfferMapFactory(offer=OfferFactory(tenant=tenant), is_active=False)
    AdOfferMapFactory()  # another tenant's

    assert routable_meta_ad(tenant) == ad
    ad.delete()
    assert routable_meta_ad(tenant) is None


@pytest.mark.django_db
def test_refusals():
    ad = AdOfferMapFactory()
    unroutable = AdOfferMapFactory(offer=OfferFactory(status=OfferStatus.PAUSED))
    closed = f"http://127.0.0.1:{find_free_port(29000)}"

    with (
        override_settings(META_APP_SECRET=""),
        pytest.raises(CommandError, match="META_APP_SECRET is not set"),
    ):
        send("--url", closed)
    with pytest.raises(CommandError, match="No ad mapping with ad id 'nope'"):
        send("--url", closed, "--ad-id", "nope")
    with pytest.raises(CommandError, match="belongs to another tenant"):
        send("--url", closed, "--ad-id", ad.ad_id, "--tenant", unroutable.tenant.slug)
    with pytest.raises(
        CommandError, match=f"No active Meta ad mapped to an ACTIVE offer for tenant {unroutable.tenant.slug}"
    ):
        send("--url", closed, "--tenant", unroutable.tenant.slug)
    with pytest.raises(CommandError, match="No tenant with id or slug 'ghost'"):
        send("--url", closed, "--tenant", "ghost")
    for count in ("0", "101", "x"):
        with pytest.raises(CommandError, match="--count"):
            send("--url", closed, "--count", count)
    with pytest.raises(CommandError, match="--wait must be 0 or more"):
        send("--url", closed, "--wait", "-1")
    # Nothing listens there: the POST fails and says where it went.
    with pytest.raises(CommandError, match=f"POST {closed}/api/webhooks/meta-leads failed: ConnectError"):
        send("--url", closed, "--ad-id", ad.ad_id)
    assert not InboxChange.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_without_a_tenant_the_first_active_tenant_with_a_routable_ad_is_used(live_server):
    suspended = AdOfferMapFactory()
    suspended.tenant.status = TenantStatus.SUSPENDED
    suspended.tenant.save()
    AdOfferMapFactory(offer=OfferFactory(status=OfferStatus.PAUSED))
    chosen = AdOfferMapFactory()

    outcome = json.loads(send("--url", live_server.url, "--wait", "0", "--json"))

    assert (outcome["ad_id"], outcome["tenant"]["slug"]) == (chosen.ad_id, chosen.tenant.slug)
