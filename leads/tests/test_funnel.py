"""The funnel stage map (`leads.funnel`) is DOMAIN.md §4 exactly, and its aggregates add up."""

from __future__ import annotations

import pytest
from django.db.models import Count

from converzia.tests.factories import TenantFactory
from leads.funnel import (
    FUNNEL_STAGES,
    STAGE_BY_STATUS,
    STAGE_KEYS,
    conversion_rate,
    stage_counts,
    stage_for_status,
    status_counts_by_group,
    statuses_for_stage,
    unmapped_statuses,
)
from leads.models import LeadOffer, LeadOfferStatus
from leads.tests.factories import LeadOfferFactory, OfferFactory

# DOMAIN.md §4, copied by hand: (key, Spanish label, statuses) in display order.
DOMAIN_FUNNEL = [
    ("received", "Recibidos", {"PENDING_MAPPING", "TO_BE_CONTACTED"}),
    ("in_chat", "En Chat", {"CONTACTED", "ENGAGED", "QUALIFYING", "HUMAN_HANDOFF"}),
    ("qualified", "Calificados", {"SCORED", "LEAD_READY"}),
    ("delivered", "Entregados", {"SENT_TO_DEVELOPER"}),
    ("not_qualified", "No Calificados", {"DISQUALIFIED", "STOPPED", "COOLING", "REACTIVATION"}),
]


def test_stages_equal_the_domain_table():
    assert [(stage.key, stage.label, set(stage.statuses)) for stage in FUNNEL_STAGES] == DOMAIN_FUNNEL
    assert STAGE_KEYS == ("received", "in_chat", "qualified", "delivered", "not_qualified")


def test_every_status_maps_to_exactly_one_stage():
    assert unmapped_statuses() == []
    memberships = {
        status: [stage.key for stage in FUNNEL_STAGES if status in stage.statuses]
        for status in LeadOfferStatus.values
    }
    assert {status: len(stages) for status, stages in memberships.items()} == dict.fromkeys(
        LeadOfferStatus.values, 1
    )
    assert sum(len(stage.statuses) for stage in FUNNEL_STAGES) == len(LeadOfferStatus.values) == 13
    assert set(STAGE_BY_STATUS) == set(LeadOfferStatus.values)


def test_lookups_in_both_directions():
    assert stage_for_status(LeadOfferStatus.HUMAN_HANDOFF) == "in_chat"
    assert stage_for_status(LeadOfferStatus.REACTIVATION) == "not_qualified"
    assert statuses_for_stage("delivered") == (LeadOfferStatus.SENT_TO_DEVELOPER,)
    with pytest.raises(KeyError):
        statuses_for_stage("total")


@pytest.mark.django_db
def test_stage_counts_on_factory_data_add_up_to_the_total():
    tenant = TenantFactory()
    offer = OfferFactory(tenant=tenant)
    # A different number of rows per status, so a status in the wrong stage shows in the counts.
    per_status = {status: index + 1 for index, status in enumerate(LeadOfferStatus.values)}
    for status, count in per_status.items():
        for _ in range(count):
            if status == LeadOfferStatus.PENDING_MAPPING:
                # Unmapped rows have no offer; they must still count, by tenant_id.
                LeadOfferFactory(tenant=tenant, offer=None, status=status)
            else:
                LeadOfferFactory(tenant=tenant, offer=offer, status=status)
    LeadOfferFactory.create_batch(3, status=LeadOfferStatus.SENT_TO_DEVELOPER)  # another tenant's

    by_status = dict(LeadOffer.objects.for_tenant(tenant).values_list("status").annotate(n=Count("*")))
    counts = stage_counts(by_status)
    total = LeadOffer.objects.for_tenant(tenant).count()

    expected = {stage.key: sum(per_status[status] for status in stage.statuses) for stage in FUNNEL_STAGES}
    assert counts == expected
    assert counts == {"received": 3, "in_chat": 25, "qualified": 13, "delivered": 8, "not_qualified": 42}
    assert total == sum(per_status.values()) == 91
    assert sum(counts.values()) == total


@pytest.mark.django_db
def test_stage_counts_by_offer_from_grouped_rows():
    tenant = TenantFactory()
    first, second = OfferFactory(tenant=tenant), OfferFactory(tenant=tenant)
    LeadOfferFactory.create_batch(2, tenant=tenant, offer=first, status=LeadOfferStatus.ENGAGED)
    LeadOfferFactory(tenant=tenant, offer=second, status=LeadOfferStatus.SENT_TO_DEVELOPER)
    rows = (
        LeadOffer.objects.for_tenant(tenant)
        .order_by()
        .values_list("offer_id", "status")
        .annotate(n=Count("*"))
    )
    by_offer = {offer_id: stage_counts(counts) for offer_id, counts in status_counts_by_group(rows).items()}
    assert {offer_id: (stages["in_chat"], stages["delivered"]) for offer_id, stages in by_offer.items()} == {
        first.pk: (2, 0),
        second.pk: (0, 1),
    }


@pytest.mark.django_db
def test_in_stage_queryset_uses_the_same_map():
    tenant = TenantFactory()
    offer = OfferFactory(tenant=tenant)
    rows = {
        status: LeadOfferFactory(tenant=tenant, offer=offer, status=status)
        for status in LeadOfferStatus.values
    }
    for stage in FUNNEL_STAGES:
        found = set(LeadOffer.objects.for_tenant(tenant).in_stage(stage.key).values_list("pk", flat=True))
        assert found == {rows[status].pk for status in stage.statuses}


@pytest.mark.parametrize(
    ("delivered", "total", "rate"),
    [
        pytest.param(0, 0, 0.0, id="_case_no_leads"),
        pytest.param(5, 0, 0.0, id="_case_zero_total_never_divides"),
        pytest.param(0, 10, 0.0, id="_case_none_delivered"),
        pytest.param(1, 3, 33.33, id="_case_round_down"),
        pytest.param(2, 3, 66.67, id="_case_round_up"),
        pytest.param(1, 8, 12.5, id="_case_exact"),
        pytest.param(8, 91, 8.79, id="_case_factory_data"),
        pytest.param(10, 10, 100.0, id="_case_all"),
    ],
)
def test_conversion_rate(delivered, total, rate):
    assert conversion_rate(delivered, total) == rate
    assert isinstance(conversion_rate(delivered, total), float)
