"""The whole staff admin, model by model (generated from `admin.site._registry`), plus the deliveries
admins. It lives in `deliveries` because building one row of every model needs every app's factories
(deliveries is the highest app that may import them all).
"""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.widgets import (
    AutocompleteSelect,
    AutocompleteSelectMultiple,
    ForeignKeyRawIdWidget,
    RelatedFieldWidgetWrapper,
)
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.db.models import Model
from django.forms import ModelChoiceField
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.models import CreditLedger, PlatformCost, TenantCreditBalance, TenantPricing
from billing.services import credit_consume, credit_purchase_record
from billing.tests.factories import PlatformCostFactory, TenantPricingFactory
from converzia.admin_tools import TenantFilter
from converzia.models import ApiToken, MembershipStatus, Tenant, TenantMember, TenantStatus, User
from converzia.services import api_token_issue
from converzia.tests.factories import TenantFactory, TenantMemberFactory
from deliveries.models import Delivery, DeliveryAttempt, DeliveryDestination
from deliveries.tests.factories import DeliveryAttemptFactory, DeliveryDestinationFactory, DeliveryFactory
from leads.ingestion import inbox_event_store
from leads.meta import LeadgenChange
from leads.models import (
    AdOfferMap,
    InboxChange,
    InboxEvent,
    Lead,
    LeadEvent,
    LeadOffer,
    LeadOfferStatus,
    LeadSource,
    Offer,
)
from leads.tests.factories import (
    AdOfferMapFactory,
    LeadEventFactory,
    LeadOfferFactory,
    LeadSourceFactory,
    OfferFactory,
)

pytestmark = pytest.mark.django_db

REGISTERED = sorted(admin.site._registry, key=lambda model: model._meta.label)
OUR_APPS = {"converzia", "leads", "billing", "deliveries", "portal"}
OURS = [model for model in REGISTERED if model._meta.app_label in OUR_APPS]
# Related models small enough for a plain <select> (Django's own permission widgets).
SMALL_RELATED = {Group, Permission}


def row_of(one_of_each: dict[type[Model], Model], model: type[Model]) -> Model:
    assert model in one_of_each, f"add a {model._meta.label} row to the one_of_each fixture"
    return one_of_each[model]


def admin_url(model: type[Model], view: str, *args: object) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def one_of_each(admin_user) -> dict[type[Model], Model]:
    """One row of every registered model, all in one tenant, written as the app writes them."""
    tenant = TenantFactory(status=TenantStatus.ACTIVE)
    member = TenantMemberFactory(tenant=tenant, status=MembershipStatus.ACTIVE)
    token = api_token_issue(user=member.user, name="ci").token
    group = Group.objects.create(name="Support")
    offer = OfferFactory(tenant=tenant)
    mapping = AdOfferMapFactory(offer=offer)
    source = LeadSourceFactory(tenant=tenant, ad_id=mapping.ad_id)
    lead_offer = LeadOfferFactory(offer=offer, lead=source.lead, lead_source=source)
    event = LeadEventFactory(lead_offer=lead_offer)
    pricing = TenantPricingFactory(tenant=tenant)
    credit_purchase_record(tenant=tenant, credits=10, total=Decimal("80.00"), actor=admin_user)
    cost = PlatformCostFactory(tenant=tenant, offer=offer)
    destination = DeliveryDestinationFactory(tenant=tenant)
    delivery = DeliveryFactory(
        lead_offer=LeadOfferFactory(offer=offer, status=LeadOfferStatus.LEAD_READY), destination=destination
    )
    attempt = DeliveryAttemptFactory(delivery=delivery, destination=destination, attempt_number=1)
    # A consumption row links a delivery and a lead_offer, so the ledger list renders those links.
    consumption = credit_consume(
        tenant_id=tenant.pk, delivery_id=delivery.pk, lead_offer_id=delivery.lead_offer_id
    )
    # A stored webhook event: its change is routed to this tenant, and storing it deferred a job.
    inbox_event = inbox_event_store(
        payload={"object": "page", "entry": []},
        changes=[
            LeadgenChange(leadgen_id="990000000001", ad_id=mapping.ad_id, value={"ad_id": mapping.ad_id})
        ],
    )
    inbox_change = inbox_event.changes.get()
    InboxChange.objects.filter(pk=inbox_change.pk).update(tenant=tenant)
    job = apps.get_model("procrastinate", "ProcrastinateJob").objects.get(args__event_id=inbox_event.pk)
    # Portal models are reached through the app registry: nothing imports from portal.
    stats_refresh = apps.get_model("portal", "StatsViewRefresh").objects.create(
        view_name="tenant_stats_materialized",
        refreshed_at=timezone.now(),
        duration_ms=12,
        row_count=1,
        concurrently=True,
    )
    return {
        type(stats_refresh): stats_refresh,
        User: member.user,
        Group: group,
        ApiToken: token,
        Tenant: tenant,
        TenantMember: member,
        Offer: offer,
        AdOfferMap: mapping,
        Lead: source.lead,
        LeadSource: source,
        LeadOffer: lead_offer,
        LeadEvent: event,
        InboxEvent: inbox_event,
        InboxChange: inbox_change,
        type(job): job,
        TenantPricing: pricing,
        # The purchase's order is created by the service above.
        CreditLedger: consumption,
        TenantCreditBalance: TenantCreditBalance.objects.get(tenant=tenant),
        PlatformCost: cost,
        DeliveryDestination: destination,
        Delivery: delivery,
        DeliveryAttempt: attempt,
        **_billing_order_of(tenant),
    }


def _billing_order_of(tenant: Tenant) -> dict[type[Model], Model]:
    from billing.models import BillingOrder

    return {BillingOrder: BillingOrder.objects.get(tenant=tenant)}


def test_every_model_of_every_app_is_registered():
    models = [
        m for m in apps.get_models() if m._meta.app_label in {"converzia", "leads", "billing", "deliveries"}
    ]
    missing = sorted(m._meta.label for m in models if m not in admin.site._registry)

    assert missing == []


@pytest.mark.parametrize("model", REGISTERED, ids=lambda model: model._meta.label)
def test_changelist_renders_the_row(admin_client, one_of_each, model):
    obj = row_of(one_of_each, model)

    response = admin_client.get(admin_url(model, "changelist"))

    assert response.status_code == 200
    assert obj.pk in {row.pk for row in response.context["cl"].result_list}


@pytest.mark.parametrize(
    "model",
    [m for m in OURS if any(f is TenantFilter for f in admin.site._registry[m].list_filter)],
    ids=lambda model: model._meta.label,
)
def test_changelist_filtered_by_tenant_renders_the_row(admin_client, one_of_each, model):
    obj = row_of(one_of_each, model)
    tenant = one_of_each[Tenant]
    other = TenantFactory()

    response = admin_client.get(admin_url(model, "changelist"), {"tenant": str(tenant.pk)})
    other_response = admin_client.get(admin_url(model, "changelist"), {"tenant": str(other.pk)})

    assert response.status_code == 200
    assert obj.pk in {row.pk for row in response.context["cl"].result_list}
    assert list(other_response.context["cl"].result_list) == []


@pytest.mark.parametrize("model", REGISTERED, ids=lambda model: model._meta.label)
def test_change_form_renders(admin_client, one_of_each, model):
    obj = row_of(one_of_each, model)

    response = admin_client.get(admin_url(model, "change", obj.pk))

    assert response.status_code == 200
    assert response.context["original"].pk == obj.pk


@pytest.mark.parametrize("model", REGISTERED, ids=lambda model: model._meta.label)
def test_add_form_renders_where_adding_is_allowed(admin_client, admin_user, one_of_each, model):
    request = RequestFactory().get("/")
    request.user = admin_user
    can_add = admin.site._registry[model].has_add_permission(request)

    response = admin_client.get(admin_url(model, "add"))

    assert response.status_code == (200 if can_add else 403)


@pytest.mark.parametrize("model", OURS, ids=lambda model: model._meta.label)
def test_changelist_never_counts_a_whole_table(admin_client, one_of_each, model):
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(admin_url(model, "changelist"))

    assert response.status_code == 200
    counts = [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts, "the changelist should count (bounded) to paginate"
    assert [sql for sql in counts if not re.search(r"\bLIMIT\b", sql, re.IGNORECASE)] == []


def _related_widgets(model_admin: admin.ModelAdmin, request, obj):
    # As the add and change views build them: fields of a view-only page are excluded (read-only).
    form = model_admin.get_form(request, obj, change=obj is not None)
    yield from ((model_admin.model, name, field) for name, field in form.base_fields.items())
    for inline in model_admin.get_inline_instances(request, obj):
        formset = inline.get_formset(request, obj)
        # The parent link is swapped for a hidden field when the formset builds its forms.
        fields = formset.form.base_fields.items()
        yield from ((inline.model, name, field) for name, field in fields if name != formset.fk.name)


@pytest.mark.parametrize("model", OURS, ids=lambda model: model._meta.label)
def test_no_form_renders_a_plain_select_of_a_related_table(admin_user, one_of_each, model):
    """A plain <select> loads every row of the related table (2M lead_offers) into the page."""
    model_admin = admin.site._registry[model]
    request = RequestFactory().get("/")
    request.user = admin_user
    offenders = []
    pages = [row_of(one_of_each, model)] + ([None] if model_admin.has_add_permission(request) else [])
    for obj in pages:
        for owner, name, field in _related_widgets(model_admin, request, obj):
            if not isinstance(field, ModelChoiceField) or field.queryset.model in SMALL_RELATED:
                continue
            widget = (
                field.widget.widget if isinstance(field.widget, RelatedFieldWidgetWrapper) else field.widget
            )
            if not isinstance(
                widget, ForeignKeyRawIdWidget | AutocompleteSelect | AutocompleteSelectMultiple
            ):
                offenders.append(f"{owner._meta.label}.{name}")

    assert offenders == []


def test_delivery_and_attempts_are_view_only(admin_client, one_of_each):
    delivery = one_of_each[Delivery]
    attempt = one_of_each[DeliveryAttempt]

    page = admin_client.get(admin_url(Delivery, "change", delivery.pk))
    post = admin_client.post(admin_url(Delivery, "change", delivery.pk), {"status": "DELIVERED"})
    delete = admin_client.post(admin_url(DeliveryAttempt, "delete", attempt.pk), {"post": "yes"})

    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    # The attempts inline shows the attempt, read-only.
    assert page.context["inline_admin_formsets"][0].formset.get_queryset()[0].pk == attempt.pk
    assert post.status_code == 403
    assert delete.status_code == 403
    assert Delivery.objects.get(pk=delivery.pk).status == "PENDING"
    assert DeliveryAttempt.objects.filter(pk=attempt.pk).exists()


def test_destination_secret_is_never_displayed(admin_client, one_of_each):
    destination = one_of_each[DeliveryDestination]

    listing = admin_client.get(admin_url(DeliveryDestination, "changelist"))
    page = admin_client.get(admin_url(DeliveryDestination, "change", destination.pk))

    assert destination.secret.encode() not in listing.content
    assert destination.secret.encode() not in page.content
    assert destination.secret_hint.encode() in page.content


def test_delivery_search_by_lead_phone_and_by_lead_offer_id(admin_client, one_of_each):
    delivery = one_of_each[Delivery]
    phone = delivery.lead_offer.lead.phone
    url = admin_url(Delivery, "changelist")

    by_phone = admin_client.get(url, {"q": phone})
    by_lead_offer = admin_client.get(url, {"q": str(delivery.lead_offer_id)})
    by_unknown = admin_client.get(url, {"q": "+5491199998888"})

    assert [row.pk for row in by_phone.context["cl"].result_list] == [delivery.pk]
    assert [row.pk for row in by_lead_offer.context["cl"].result_list] == [delivery.pk]
    assert list(by_unknown.context["cl"].result_list) == []
