"""`manage.py bench` against a real server (pytest-django's live server on the test database)."""

from __future__ import annotations

import json
import socket

import pytest
from django.core.management import CommandError, call_command

from converzia.models import ApiToken, TenantRole
from converzia.tests.factories import StaffUserFactory, TenantFactory, TenantMemberFactory
from deliveries.tests.factories import DeliveryFactory
from leads.models import LeadOfferStatus as S
from leads.tests.factories import LeadOfferFactory, OfferFactory
from portal.stats_view import tenant_stats_refresh

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dataset():
    """Two tenants with an owner each and a spread of lead_offers; a staff user."""
    StaffUserFactory()
    for size in (40, 12):
        tenant = TenantFactory()
        TenantMemberFactory(tenant=tenant, role=TenantRole.OWNER)
        offer = OfferFactory(tenant=tenant)
        for index in range(size):
            status = (S.ENGAGED, S.LEAD_READY, S.SENT_TO_DEVELOPER, S.DISQUALIFIED)[index % 4]
            lead_offer = LeadOfferFactory(offer=offer, status=status)
            if status == S.SENT_TO_DEVELOPER:
                DeliveryFactory(lead_offer=lead_offer, delivered=True)
    tenant_stats_refresh()


def run_bench(*args: str, **options) -> list[dict]:
    from io import StringIO

    out = StringIO()
    call_command("bench", *args, stdout=out, stderr=StringIO(), **options)
    return json.loads(out.getvalue())


def test_quick_runs_every_scenario_without_errors(dataset, live_server):
    results = run_bench("--quick", "--json", url=live_server.url)

    names = {result["name"] for result in results}
    assert {"leads.first_page", "leads.search", "stats.whale.uncached", "funnel.whale.cached"} <= names
    assert {"admin.revenue.uncached", "admin.stats", "admin.queue"} <= names
    for result in results:
        assert result["failed"] == 0, result
        assert result["requests"] > 0 and result["p50_ms"] > 0
    # Uncached reads were timed against their own SQL; cached reads run none.
    by_name = {result["name"]: result for result in results}
    assert by_name["stats.whale.uncached"]["raw_sql_p50_ms"] > 0
    assert by_name["stats.whale.uncached"]["overhead_ratio"] > 0
    assert by_name["stats.whale.cached"]["raw_sql_p50_ms"] is None
    # The throw-away tokens are revoked when the run ends.
    assert not ApiToken.objects.filter(name="bench", revoked_at=None).exists()


def test_scenario_globs_select_and_an_unknown_one_lists_the_names(dataset, live_server):
    results = run_bench("--quick", "--json", "--scenario", "stats.*", url=live_server.url)
    assert {result["name"] for result in results} == {
        "stats.whale.uncached",
        "stats.small.uncached",
        "stats.whale.cached",
        "stats.small.cached",
    }
    with pytest.raises(CommandError, match="leads.first_page"):
        run_bench("--quick", "--scenario", "nope.*", url=live_server.url)


def test_no_server_is_a_clear_error(dataset):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CommandError, match="No server answers"):
        run_bench(url=f"http://127.0.0.1:{port}")


def test_an_empty_database_is_a_clear_error(live_server):
    with pytest.raises(CommandError, match="seed_demo"):
        run_bench("--quick", url=live_server.url)
