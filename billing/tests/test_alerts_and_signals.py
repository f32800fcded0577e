"""What a ledger write does besides the row: low-credit alerts, metrics, the `balance_increased` signal
after commit, and how few statements it costs."""

from __future__ import annotations

import logging

import pytest
from django.db import connection, transaction
from django.db.models import RestrictedError
from django.test.utils import CaptureQueriesContext
from prometheus_client import REGISTRY

from billing.models import CreditAlert, CreditAlertType, CreditLedger, CreditTransactionType
from billing.services import (
    credit_adjust,
    credit_alert_type,
    credit_bonus_grant,
    credit_consume,
    credit_purchase_record,
    credit_refund,
)
from billing.signals import balance_increased
from billing.tests.factories import TenantPricingFactory
from converzia.models import Tenant
from converzia.tests.factories import StaffUserFactory, TenantFactory
from deliveries.models import Delivery
from deliveries.tests.factories import DeliveryFactory
from leads.tests.factories import OfferFactory

T = CreditTransactionType
LOW = CreditAlertType.LOW_CREDITS
ZERO = CreditAlertType.ZERO_CREDITS


def new_delivery(tenant: Tenant) -> Delivery:
    return DeliveryFactory(lead_offer__offer=OfferFactory(tenant=tenant))


def charge(tenant: Tenant, delivery: Delivery | None = None) -> CreditLedger:
    delivery = delivery or new_delivery(tenant)
    return credit_consume(tenant_id=tenant.pk, delivery_id=delivery.pk, lead_offer_id=delivery.lead_offer_id)


def alerts(tenant: Tenant) -> list[tuple[str, int, int, object]]:
    rows = CreditAlert.objects.filter(tenant=tenant).order_by("created_at", "id")
    return list(rows.values_list("alert_type", "balance", "threshold", "ledger_entry_id"))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- which entry raises which alert -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("_case", "before", "after", "threshold", "expected"),
    [
        ("_case_crosses", 10, 9, 10, LOW),
        ("_case_lands_on_threshold", 11, 10, 10, None),
        ("_case_already_below", 9, 8, 10, None),
        ("_case_jumps_far_below", 30, 2, 10, LOW),
        ("_case_reaches_zero_from_below_threshold", 1, 0, 10, ZERO),
        ("_case_crosses_and_reaches_zero", 15, 0, 10, ZERO),
        ("_case_stays_at_zero_never_happens_but_is_quiet", 0, 0, 10, None),
        ("_case_goes_up", 5, 50, 10, None),
        ("_case_up_across_threshold", 9, 10, 10, None),
        ("_case_threshold_zero_never_low", 5, 1, 0, None),
        ("_case_threshold_zero_still_zero", 1, 0, 0, ZERO),
    ],
)
def test_credit_alert_type(_case, before, after, threshold, expected):
    assert credit_alert_type(before=before, after=after, threshold=threshold) == expected


@pytest.mark.django_db
def test_crossing_the_default_threshold_writes_one_low_credits_alert():
    tenant = TenantFactory()  # no pricing row: the model default, 10
    credit_bonus_grant(tenant=tenant, amount=11, reason="start")

    at_threshold = charge(tenant)
    crossing = charge(tenant)
    below = charge(tenant)

    assert (at_threshold.balance_after, crossing.balance_after, below.balance_after) == (10, 9, 8)
    assert alerts(tenant) == [(LOW, 9, 10, crossing.pk)]


@pytest.mark.django_db
def test_going_back_above_and_crossing_again_writes_another_alert():
    tenant = TenantFactory()
    staff = StaffUserFactory()
    credit_bonus_grant(tenant=tenant, amount=10, reason="start")
    first = charge(tenant)
    credit_bonus_grant(tenant=tenant, amount=1, reason="back to 10")
    credit_adjust(tenant=tenant, amount=5, reason="up", actor=staff)
    staying_above = credit_adjust(tenant=tenant, amount=-5, reason="down to 10", actor=staff)
    second = credit_adjust(tenant=tenant, amount=-3, reason="below again", actor=staff)

    assert staying_above.balance_after == 10
    assert alerts(tenant) == [(LOW, 9, 10, first.pk), (LOW, 7, 10, second.pk)]


@pytest.mark.django_db
def test_reaching_zero_writes_zero_credits_and_one_entry_writes_one_alert():
    tenant = TenantFactory()
    credit_bonus_grant(tenant=tenant, amount=2, reason="start")
    charge(tenant)
    empty = charge(tenant)
    credit_bonus_grant(tenant=tenant, amount=15, reason="refill")
    all_at_once = credit_adjust(tenant=tenant, amount=-15, reason="clawback", actor=StaffUserFactory())

    # 2 → 1 raises nothing (already below 10); 1 → 0 empties it; 15 → 0 crosses the threshold and
    # empties it in one entry, which writes ZERO_CREDITS only.
    assert alerts(tenant) == [(ZERO, 0, 10, empty.pk), (ZERO, 0, 10, all_at_once.pk)]


@pytest.mark.django_db
def test_each_tenant_has_its_own_threshold():
    custom, default = TenantFactory(), TenantFactory()
    TenantPricingFactory(tenant=custom, low_credit_threshold=3)
    for tenant in (custom, default):
        credit_bonus_grant(tenant=tenant, amount=12, reason="start")
        credit_adjust(tenant=tenant, amount=-8, reason="down to 4", actor=StaffUserFactory())

    at_custom_threshold = charge(custom)
    crossing_custom = charge(custom)

    assert at_custom_threshold.balance_after == 3
    assert alerts(custom) == [(LOW, 2, 3, crossing_custom.pk)]
    default_crossing = CreditLedger.objects.get(tenant=default, transaction_type=T.CREDIT_ADJUSTMENT)
    assert alerts(default) == [(LOW, 4, 10, default_crossing.pk)]


@pytest.mark.django_db
def test_a_failed_write_raises_no_alert():
    tenant = TenantFactory()
    credit_bonus_grant(tenant=tenant, amount=10, reason="start")
    delivery = new_delivery(tenant)
    charge(tenant, delivery)  # 10 → 9: one alert

    with pytest.raises(Exception, match="already been charged"):
        charge(tenant, delivery)

    assert len(alerts(tenant)) == 1


# --- metrics and the log line, after commit -------------------------------------------------------------


@pytest.mark.django_db
def test_alerts_and_ledger_entries_are_counted_after_commit(django_capture_on_commit_callbacks):
    tenant = TenantFactory()
    name, alert_name = "converzia_ledger_entries_total", "converzia_credit_alerts_total"
    bonuses = sample(name, transaction_type=T.CREDIT_BONUS)
    consumptions = sample(name, transaction_type=T.CREDIT_CONSUMPTION)
    lows, zeros = sample(alert_name, alert_type=LOW), sample(alert_name, alert_type=ZERO)

    with django_capture_on_commit_callbacks(execute=True):
        credit_bonus_grant(tenant=tenant, amount=10, reason="start")
        charge(tenant)
        # Not counted before the transaction commits.
        assert sample(alert_name, alert_type=LOW) == lows
        assert sample(name, transaction_type=T.CREDIT_CONSUMPTION) == consumptions

    assert sample(name, transaction_type=T.CREDIT_BONUS) == bonuses + 1
    assert sample(name, transaction_type=T.CREDIT_CONSUMPTION) == consumptions + 1
    assert sample(alert_name, alert_type=LOW) == lows + 1
    assert sample(alert_name, alert_type=ZERO) == zeros

    with django_capture_on_commit_callbacks(execute=True):
        credit_adjust(tenant=tenant, amount=-9, reason="empty", actor=StaffUserFactory())
    assert sample(alert_name, alert_type=ZERO) == zeros + 1
    assert sample(alert_name, alert_type=LOW) == lows + 1


@pytest.mark.django_db
def test_a_rolled_back_entry_is_not_counted(django_capture_on_commit_callbacks):
    tenant = TenantFactory()
    name = "converzia_ledger_entries_total"
    before = sample(name, transaction_type=T.CREDIT_BONUS)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            credit_bonus_grant(tenant=tenant, amount=10, reason="start")
            raise RuntimeError("the caller's transaction fails")

    assert callbacks == []
    assert sample(name, transaction_type=T.CREDIT_BONUS) == before


@pytest.mark.django_db
def test_each_alert_logs_one_structured_warning(caplog, django_capture_on_commit_callbacks):
    tenant = TenantFactory()
    TenantPricingFactory(tenant=tenant, low_credit_threshold=5)
    credit_bonus_grant(tenant=tenant, amount=6, reason="start")

    with caplog.at_level(logging.WARNING, logger="billing.services"):
        with django_capture_on_commit_callbacks(execute=True):
            charge(tenant)  # 6 → 5: nothing
            charge(tenant)  # 5 → 4: LOW
            credit_adjust(tenant=tenant, amount=-4, reason="empty", actor=StaffUserFactory())  # ZERO

    records = [record for record in caplog.records if record.name == "billing.services"]
    assert [(r.levelno, r.tenant_id, r.balance, r.threshold, r.alert_type) for r in records] == [
        (logging.WARNING, str(tenant.pk), 4, 5, "LOW_CREDITS"),
        (logging.WARNING, str(tenant.pk), 0, 5, "ZERO_CREDITS"),
    ]


# --- balance_increased ------------------------------------------------------------------------------


@pytest.fixture
def received():
    calls: list[dict[str, object]] = []

    def receiver(sender, **kwargs):
        calls.append({"sender": sender, **kwargs})

    balance_increased.connect(receiver, weak=False)
    yield calls
    balance_increased.disconnect(receiver)


@pytest.mark.django_db(transaction=True)
def test_balance_increased_is_sent_only_after_commit(received):
    tenant = TenantFactory()

    with transaction.atomic():
        credit_bonus_grant(tenant=tenant, amount=3, reason="start")
        assert received == []

    # The signal carries the sender's model class; compare the rest.
    assert received == [
        {"sender": CreditLedger, "signal": balance_increased, "tenant_id": tenant.pk, "balance": 3}
    ]


@pytest.mark.django_db(transaction=True)
def test_balance_increased_is_not_sent_when_the_transaction_rolls_back(received):
    tenant = TenantFactory()

    with pytest.raises(RuntimeError), transaction.atomic():
        credit_bonus_grant(tenant=tenant, amount=3, reason="start")
        raise RuntimeError("the caller's transaction fails")

    assert received == []
    assert CreditLedger.objects.filter(tenant=tenant).count() == 0


@pytest.mark.django_db(transaction=True)
def test_balance_increased_is_sent_for_positive_entries_only(received):
    tenant = TenantFactory()
    staff = StaffUserFactory()
    delivery = new_delivery(tenant)

    credit_purchase_record(tenant=tenant, credits=5, total=40)
    charge(tenant, delivery)
    credit_adjust(tenant=tenant, amount=-1, reason="down", actor=staff)
    credit_refund(tenant_id=tenant.pk, delivery_id=delivery.pk, reason="spam")
    credit_adjust(tenant=tenant, amount=2, reason="up", actor=staff)
    credit_bonus_grant(tenant=tenant, amount=1, reason="gift")

    # purchase 5, (charge 4), (adjust 3), refund 4, adjust 6, bonus 7.
    assert [call["balance"] for call in received] == [5, 4, 6, 7]
    assert {call["tenant_id"] for call in received} == {tenant.pk}


@pytest.mark.django_db(transaction=True)
def test_a_failing_receiver_does_not_break_the_committed_write():
    tenant = TenantFactory()

    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    balance_increased.connect(broken, weak=False)
    try:
        entry = credit_bonus_grant(tenant=tenant, amount=3, reason="start")
    finally:
        balance_increased.disconnect(broken)

    assert CreditLedger.objects.get(tenant=tenant).pk == entry.pk


# --- statements per write -----------------------------------------------------------------------------


def statements(context: CaptureQueriesContext) -> list[str]:
    """Each captured statement reduced to its verb and table."""
    reduced = []
    for query in context.captured_queries:
        sql = query["sql"]
        if sql.startswith(("BEGIN", "COMMIT")):
            reduced.append(sql.split()[0])
        elif sql.startswith("SELECT"):
            table = sql.split(' FROM "')[-1].split('"')[0]
            reduced.append(f"SELECT {table}" + (" FOR UPDATE" if sql.endswith("FOR UPDATE") else ""))
        else:
            verb = sql.split()[0]
            reduced.append(f"{verb} {sql.split(chr(34))[1]}")
    return reduced


@pytest.mark.django_db(transaction=True)
def test_a_charge_is_three_statements():
    """Lock the balance row (reading the threshold in the same statement), insert, update.

    Before this change it was seven: an INSERT … ON CONFLICT for the balance row on every write, the
    lock, a savepoint and its release around the insert, the update, and a separate threshold read.
    """
    tenant = TenantFactory()
    credit_bonus_grant(tenant=tenant, amount=50, reason="start")
    delivery = new_delivery(tenant)

    with CaptureQueriesContext(connection) as context:
        charge(tenant, delivery)

    assert statements(context) == [
        "BEGIN",
        "SELECT tenant_credit_balances FOR UPDATE",
        "INSERT credit_ledger",
        "UPDATE tenant_credit_balances",
        "COMMIT",
    ]


@pytest.mark.django_db(transaction=True)
def test_an_alerting_charge_adds_one_insert_and_a_first_entry_creates_the_balance_row():
    tenant = TenantFactory()
    with CaptureQueriesContext(connection) as first:
        credit_bonus_grant(tenant=tenant, amount=10, reason="start")
    delivery = new_delivery(tenant)
    with CaptureQueriesContext(connection) as alerting:
        charge(tenant, delivery)  # 10 → 9

    # Up to the write's own COMMIT: after it, `balance_increased` receivers (deliveries) do their work.
    own_transaction = statements(first)[: statements(first).index("COMMIT") + 1]
    assert own_transaction == [
        "BEGIN",
        "SELECT tenant_credit_balances FOR UPDATE",
        "INSERT tenant_credit_balances",
        "SELECT tenant_credit_balances FOR UPDATE",
        "INSERT credit_ledger",
        "UPDATE tenant_credit_balances",
        "COMMIT",
    ]
    assert statements(alerting) == [
        "BEGIN",
        "SELECT tenant_credit_balances FOR UPDATE",
        "INSERT credit_ledger",
        "UPDATE tenant_credit_balances",
        "INSERT credit_alerts",
        "COMMIT",
    ]


# --- deletion -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_alerts_ledger_entry_cannot_be_deleted_alone_but_the_tenant_can():
    tenant = TenantFactory()
    credit_bonus_grant(tenant=tenant, amount=10, reason="start")
    emptied = credit_adjust(tenant=tenant, amount=-10, reason="empty", actor=StaffUserFactory())

    with pytest.raises(RestrictedError):
        CreditLedger.objects.filter(pk=emptied.pk).delete()
    Tenant.objects.filter(pk=tenant.pk).delete()

    assert CreditAlert.objects.filter(tenant_id=tenant.pk).count() == 0
    assert CreditLedger.objects.filter(tenant_id=tenant.pk).count() == 0
