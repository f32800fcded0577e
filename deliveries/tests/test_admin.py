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

from billing.models import (
    CreditAlert,
    CreditLedger,
    CreditTransactionType,
    PlatformCost,
    TenantCreditBalance,
    TenantPricing,
)
from billing.services import credit_bonus_grant, credit_consume, credit_purchase_record
from billing.tests.factories import PlatformCostFactory, TenantPricingFactory
from converzia.admin_tools import TenantFilter
from converzia.models import ApiToken, MembershipStatus, Tenant, TenantMember, TenantStatus, User
from converzia.services import api_token_issue
from converzia.tests.factories import StaffUserFactory, TenantFactory, TenantMemberFactory
from converzia.tests.test_admin import messages_of, post_action
from deliveries.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryBlockedReason,
    DeliveryDestination,
    DeliveryStatus,
)
from deliveries.services import SendRecord, deliveries_complete, lead_offer_qualify
from deliveries.tests.factories import DeliveryAttemptFactory, DeliveryDestinationFactory, DeliveryFactory
from leads.ingestion import drain_queueing_lock, drain_shard, inbox_event_store
from leads.meta import LeadgenChange
from leads.models import (
    AdOfferMap,
    BillingEligibility,
    InboxChange,
    InboxEvent,
    Lead,
    LeadEvent,
    LeadEventType,
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
    job = apps.get_model("procrastinate", "ProcrastinateJob").objects.get(
        queueing_lock=drain_queueing_lock(drain_shard(inbox_event.pk))
    )
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
        # 10 → 9 crosses the default low-credit threshold (10): the consumption wrote this alert.
        CreditAlert: CreditAlert.objects.get(ledger_entry=consumption),
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


# Bookkeeping that only triggers and leads.counters write; nothing for staff to see or edit there (and
# the admin cannot register a model with a composite primary key). The counts show in tenant stats.
NOT_IN_ADMIN = {"leads.LeadOfferCount", "leads.LeadOfferCountDelta"}


def test_every_model_of_every_app_is_registered():
    models = [
        m
        for m in apps.get_models()
        if m._meta.app_label in {"converzia", "leads", "billing", "deliveries"}
        and m._meta.label not in NOT_IN_ADMIN
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


# --- Delivery actions: retry and refund through the services -------------------------------------------

DELIVERIES = reverse("admin:deliveries_delivery_changelist")


def delivered_and_charged() -> Delivery:
    """A lead qualified to LEAD_READY, its delivery sent and settled: DELIVERED, one credit consumed."""
    lead_offer = LeadOfferFactory(status=LeadOfferStatus.QUALIFYING)
    credit_bonus_grant(tenant=lead_offer.tenant, amount=3, reason="test")
    lead_offer_qualify(lead_offer=lead_offer, score_total=95)
    delivery = Delivery.objects.get(lead_offer=lead_offer)
    (completion,) = deliveries_complete(
        [
            SendRecord(
                delivery_id=delivery.pk,
                attempt_number=1,
                destination_id=None,
                url="http://127.0.0.1:9/hook",
                status_code=200,
                duration_ms=5,
            )
        ]
    )
    assert completion.charged
    return Delivery.objects.get(pk=delivery.pk)


def test_retry_action_makes_a_dead_letter_due_now(admin_client, admin_user):
    delivery = DeliveryFactory(
        status=DeliveryStatus.DEAD_LETTER,
        attempt_count=8,
        next_attempt_at=None,
        dead_letter_at=timezone.now(),
        dead_letter_reason="Gave up after 8 attempts.",
    )

    response = post_action(admin_client, DELIVERIES, "retry_deliveries", [delivery.pk])

    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.next_attempt_at is not None and delivery.next_attempt_at <= timezone.now()
    assert delivery.attempt_budget_start == 8
    assert (delivery.dead_letter_at, delivery.dead_letter_reason) == (None, "")
    assert messages_of(response) == ["Retried 1 delivery(ies)."]
    event = LeadEvent.objects.get(lead_offer=delivery.lead_offer, event_type=LeadEventType.MANUAL_ACTION)
    assert event.actor_id == admin_user.pk


def test_retry_action_reports_each_refusal_and_counts_both(admin_client):
    dead = DeliveryFactory(status=DeliveryStatus.DEAD_LETTER, next_attempt_at=None)
    delivered = DeliveryFactory(delivered=True, next_attempt_at=None)

    response = post_action(admin_client, DELIVERIES, "retry_deliveries", [dead.pk, delivered.pk])

    assert Delivery.objects.get(pk=dead.pk).status == DeliveryStatus.PENDING
    unchanged = Delivery.objects.get(pk=delivered.pk)
    assert (unchanged.status, unchanged.next_attempt_at) == (DeliveryStatus.DELIVERED, None)
    assert messages_of(response) == [
        f"{unchanged}: Only a failed or dead-letter delivery can be retried.",
        "Retried 1 delivery(ies).",
        "1 delivery(ies) could not be retried (see above).",
    ]


def test_refund_action_asks_for_a_reason_then_refunds_the_credit(admin_client, admin_user):
    delivery = delivered_and_charged()
    balance = TenantCreditBalance.objects.get(tenant_id=delivery.tenant_id).balance

    page = post_action(admin_client, DELIVERIES, "refund_deliveries", [delivery.pk])
    blank = post_action(admin_client, DELIVERIES, "refund_deliveries", [delivery.pk], {"reason": "  "})
    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.DELIVERED
    response = post_action(
        admin_client, DELIVERIES, "refund_deliveries", [delivery.pk], {"reason": "Wrong phone number"}
    )

    assert page.status_code == 200
    assert page.templates[0].name == "admin/converzia/action_form.html"
    assert blank.status_code == 200
    assert blank.context["form"].errors == {"reason": ["This field is required."]}
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.REFUNDED and delivery.refunded_at is not None
    refund = CreditLedger.objects.get(delivery=delivery, transaction_type=CreditTransactionType.CREDIT_REFUND)
    assert (refund.amount, refund.created_by_id) == (1, admin_user.pk)
    assert TenantCreditBalance.objects.get(tenant_id=delivery.tenant_id).balance == balance + 1
    lead_offer = LeadOffer.objects.get(pk=delivery.lead_offer_id)
    assert lead_offer.billing_eligibility == BillingEligibility.PENDING
    assert lead_offer.billing_notes == "Refunded: Wrong phone number"
    assert messages_of(response) == ["Refunded 1 delivery(ies)."]


def test_refund_action_refuses_an_undelivered_delivery(admin_client):
    delivery = DeliveryFactory()

    response = post_action(
        admin_client, DELIVERIES, "refund_deliveries", [delivery.pk], {"reason": "why not"}
    )

    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.PENDING
    assert not CreditLedger.objects.filter(delivery=delivery).exists()
    assert messages_of(response) == [
        f"{delivery}: Only a delivered (charged) delivery can be refunded.",
        "1 delivery(ies) could not be refunded (see above).",
    ]


def test_delivery_actions_need_the_change_permission(client):
    viewer = StaffUserFactory()
    viewer.user_permissions.add(Permission.objects.get(codename="view_delivery"))
    client.force_login(viewer)
    delivery = DeliveryFactory(status=DeliveryStatus.DEAD_LETTER, next_attempt_at=None)

    listing = client.get(DELIVERIES)
    response = post_action(client, DELIVERIES, "retry_deliveries", [delivery.pk])

    assert listing.status_code == 200
    # No action is offered (nor delete: the page is view-only), so the posted one is not run.
    assert listing.context["action_form"] is None
    assert response.status_code == 200
    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.DEAD_LETTER


def test_delivery_change_page_shows_the_state_machine_fields(admin_client):
    delivery = DeliveryFactory(
        status=DeliveryStatus.FAILED,
        blocked_reason=DeliveryBlockedReason.INSUFFICIENT_CREDITS,
        claimed_until=timezone.now(),
        attempt_budget_start=3,
        error_message="HTTP 503 from the receiver",
    )
    dead = DeliveryFactory(
        status=DeliveryStatus.DEAD_LETTER,
        dead_letter_at=timezone.now(),
        dead_letter_reason="Gave up after 8.",
    )

    page = admin_client.get(admin_url(Delivery, "change", delivery.pk))
    dead_page = admin_client.get(admin_url(Delivery, "change", dead.pk))
    listing = admin_client.get(DELIVERIES)

    assert page.status_code == 200
    shown = {field for fieldset in page.context["adminform"] for line in fieldset for field in line.fields}
    assert {
        "blocked_reason",
        "claimed_until",
        "attempt_budget_start",
        "dead_letter_reason",
        "error_message",
    } <= shown
    html = page.content.decode()
    assert "HTTP 503 from the receiver" in html
    assert DeliveryBlockedReason.INSUFFICIENT_CREDITS.label in html
    assert b'name="_save"' not in page.content
    assert "Gave up after 8." in dead_page.content.decode()
    assert listing.status_code == 200
    assert {"retry_deliveries", "refund_deliveries"} <= {
        name for name, _ in listing.context["action_form"].fields["action"].choices
    }


def test_lead_offer_status_action_goes_through_deliveries(admin_client):
    """The lead offer admin's "Change status" is the deliveries domain's: LEAD_READY creates the
    delivery and SENT_TO_DEVELOPER is refused (only a successful delivery sets it)."""
    from converzia.tests.test_admin import messages_of, post_action
    from leads.models import LeadOfferStatus
    from leads.tests.factories import LeadOfferFactory

    lead_offers_url = reverse("admin:leads_leadoffer_changelist")
    qualifying = LeadOfferFactory(status=LeadOfferStatus.QUALIFYING)
    ready = LeadOfferFactory(status=LeadOfferStatus.LEAD_READY)

    post_action(
        admin_client,
        lead_offers_url,
        "change_status",
        [qualifying.pk],
        {
            "to_status": LeadOfferStatus.LEAD_READY,
            "reason": "qualified by phone",
            "disqualification_category": "",
        },
    )
    refused = post_action(
        admin_client,
        lead_offers_url,
        "change_status",
        [ready.pk],
        {"to_status": LeadOfferStatus.SENT_TO_DEVELOPER, "reason": "", "disqualification_category": ""},
    )

    assert Delivery.objects.filter(lead_offer=qualifying).count() == 1
    assert LeadOffer.objects.get(pk=ready.pk).status == LeadOfferStatus.LEAD_READY
    assert any("cannot move from LEAD_READY to SENT_TO_DEVELOPER" in m for m in messages_of(refused))
