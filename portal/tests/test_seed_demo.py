"""`manage.py seed_demo`: counts, logins, ledger and funnel consistency, reproducibility, refusals."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import random
import re
from collections import Counter, defaultdict

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.db.models import Count, F
from django.db.utils import DatabaseError
from django.utils import timezone

from billing.models import BillingOrder, CreditLedger, TenantCreditBalance
from converzia.models import ApiToken, Tenant, TenantMember, User
from deliveries.models import Delivery, DeliveryAttempt
from leads.models import Lead, LeadEvent, LeadOffer, LeadSource
from leads.phones import normalize_phone
from leads.transitions import ALLOWED_TRANSITIONS
from portal.seeding.generator import PhoneBook
from portal.seeding.runner import BULK_TABLES, REFERENCING_TABLES, seed_config, seed_demo

pytestmark = pytest.mark.django_db

SEEDED_TABLES = [
    "users", "api_tokens", "tenants", "tenant_members", "tenant_pricing", "offers", "ad_offer_map",
    "delivery_destinations", "billing_orders", "tenant_credit_balances", "platform_costs", *BULK_TABLES,
    *REFERENCING_TABLES,
]  # fmt: skip

SMALL = ["--tenants", "5", "--leads", "1500", "--whale", "500", "--seed", "7"]


def seed(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("seed_demo", *args, "--no-progress", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def seed_json(*args: str) -> dict:
    out, _ = seed(*args, "--json")
    # stdout carries the JSON and nothing else.
    return json.loads(out)


def index_definitions() -> set[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = ANY(%s)",
            [BULK_TABLES],
        )
        return set(cursor.fetchall())


def orphans(sql: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def assert_counters_match_group_by() -> None:
    """The maintained counters (leads/counters.py) equal a GROUP BY of the seeded lead_offers."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tenant_id, status,"
            " CASE WHEN status = 'DISQUALIFIED' THEN disqualification_category ELSE '' END, count(*)"
            " FROM lead_offers GROUP BY 1, 2, 3"
        )
        expected = {row[:3]: row[3] for row in cursor.fetchall()}
        cursor.execute(
            "SELECT tenant_id, status, disqualification_category, sum(n) FROM"
            " (SELECT tenant_id, status, disqualification_category, n FROM lead_offer_counts"
            "  UNION ALL SELECT tenant_id, status, disqualification_category, delta"
            "  FROM lead_offer_count_deltas) c"
            " GROUP BY 1, 2, 3 HAVING sum(n) <> 0"
        )
        counted = {row[:3]: row[3] for row in cursor.fetchall()}
        cursor.execute("SELECT count(*) FROM lead_offer_count_deltas")
        (pending,) = cursor.fetchone()
    assert expected and counted == expected
    assert pending == 0  # the rebuild folded everything


# --- a small run ---------------------------------------------------------------------------------


def test_small_run_creates_the_expected_rows():
    credentials = seed_json(*SMALL)

    assert Tenant.objects.count() == 5
    # One self-registered tenant waits for approval: no data yet, its owner pending.
    pending = Tenant.objects.get(status="PENDING")
    assert Tenant.objects.filter(status="ACTIVE").count() == 4
    assert not LeadOffer.objects.filter(tenant=pending).exists()
    assert TenantMember.objects.get(tenant=pending).status == "PENDING_APPROVAL"

    assert LeadOffer.objects.count() == 1500
    whale = Tenant.objects.get(pk=credentials["tenants"][0]["id"])
    assert LeadOffer.objects.filter(tenant=whale).count() == 500
    assert LeadSource.objects.count() == 1500
    # Leads are global people; some appear for two tenants.
    shared = LeadOffer.objects.values("lead").annotate(n=Count("id"))
    assert shared.filter(n=2).exists()
    assert not shared.filter(n__gt=2).exists()
    assert Lead.objects.count() == 1500 - shared.filter(n=2).count()
    assert_counters_match_group_by()


def test_every_lead_offer_has_its_source_event_and_offer():
    seed(*SMALL)

    assert not LeadOffer.objects.filter(lead_source__isnull=True).exists()
    assert not LeadOffer.objects.exclude(lead_source__tenant=F("tenant")).exists()
    assert not LeadOffer.objects.exclude(lead_source__lead=F("lead")).exists()
    created = LeadEvent.objects.filter(event_type="CREATED")
    assert created.count() == 1500
    assert created.values("lead_offer").distinct().count() == 1500
    assert not created.exclude(tenant=F("lead_offer__tenant")).exists()
    # Unmapped ads (offer NULL) are exactly the rows waiting in PENDING_MAPPING.
    assert set(LeadOffer.objects.filter(offer__isnull=True).values_list("status", flat=True)) == {
        "PENDING_MAPPING"
    }
    assert not LeadOffer.objects.filter(offer__isnull=False, status="PENDING_MAPPING").exists()
    assert not LeadOffer.objects.exclude(offer__isnull=True).exclude(offer__tenant=F("tenant")).exists()
    leadgen_ids = LeadSource.objects.values_list("tenant", "leadgen_id")
    assert len(set(leadgen_ids)) == 1500


def test_foreign_keys_hold_although_the_load_skipped_their_triggers():
    seed(*SMALL)

    checks = {
        "lead_offers.lead": "SELECT count(*) FROM lead_offers x LEFT JOIN leads p ON p.id = x.lead_id "
        "WHERE p.id IS NULL",
        "lead_offers.source": "SELECT count(*) FROM lead_offers x LEFT JOIN lead_sources p "
        "ON p.id = x.lead_source_id WHERE p.id IS NULL",
        "lead_offers.offer": "SELECT count(*) FROM lead_offers x LEFT JOIN offers p ON p.id = x.offer_id "
        "WHERE x.offer_id IS NOT NULL AND p.id IS NULL",
        "lead_sources.lead": "SELECT count(*) FROM lead_sources x LEFT JOIN leads p ON p.id = x.lead_id "
        "WHERE p.id IS NULL",
        "lead_events.lead_offer": "SELECT count(*) FROM lead_events x LEFT JOIN lead_offers p "
        "ON p.id = x.lead_offer_id WHERE p.id IS NULL",
        "lead_events.lead": "SELECT count(*) FROM lead_events x LEFT JOIN leads p ON p.id = x.lead_id "
        "WHERE p.id IS NULL",
        "deliveries.lead_offer": "SELECT count(*) FROM deliveries x LEFT JOIN lead_offers p "
        "ON p.id = x.lead_offer_id WHERE p.id IS NULL",
        "deliveries.destination": "SELECT count(*) FROM deliveries x LEFT JOIN delivery_destinations p "
        "ON p.id = x.destination_id WHERE x.destination_id IS NOT NULL AND p.id IS NULL",
        "delivery_attempts.delivery": "SELECT count(*) FROM delivery_attempts x LEFT JOIN deliveries p "
        "ON p.id = x.delivery_id WHERE p.id IS NULL",
        "credit_ledger.delivery": "SELECT count(*) FROM credit_ledger x LEFT JOIN deliveries p "
        "ON p.id = x.delivery_id WHERE x.delivery_id IS NOT NULL AND p.id IS NULL",
        "credit_ledger.order": "SELECT count(*) FROM credit_ledger x LEFT JOIN billing_orders p "
        "ON p.id = x.billing_order_id WHERE x.billing_order_id IS NOT NULL AND p.id IS NULL",
        "credit_ledger.lead_offer": "SELECT count(*) FROM credit_ledger x LEFT JOIN lead_offers p "
        "ON p.id = x.lead_offer_id WHERE x.lead_offer_id IS NOT NULL AND p.id IS NULL",
    }
    assert {name: orphans(sql) for name, sql in checks.items()} == {name: 0 for name in checks}
    # Every tenant_id of the bulk tables names a tenant.
    for table in ("lead_sources", "lead_offers", "lead_events", "deliveries", "credit_ledger"):
        assert (
            orphans(
                f"SELECT count(*) FROM {table} x LEFT JOIN tenants t ON t.id = x.tenant_id WHERE t.id IS NULL"
            )
            == 0
        ), table


def test_indexes_and_session_settings_are_restored():
    before = index_definitions()
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        timeout_before = cursor.fetchone()[0]

    seed(*SMALL)

    assert index_definitions() == before
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('session_replication_role'), current_setting('statement_timeout')"
        )
        assert cursor.fetchone() == ("origin", timeout_before)
    # Triggers fire again: the ledger still refuses updates.
    entry = CreditLedger.objects.first()
    with pytest.raises(DatabaseError), transaction.atomic():
        CreditLedger.objects.filter(pk=entry.pk).update(notes="changed")


def test_without_superuser_rights_the_foreign_key_triggers_check_every_row():
    """A non-superuser cannot switch FK triggers off: the load still works and every row is checked."""
    role = f"seed_demo_owner_{os.getpid()}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role} NOSUPERUSER")
        # Like the app's user, which ran the migrations: it may create objects (indexes) in the schema.
        cursor.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")
        # The seeder's tables belong to the role, as they belong to the app's user in real life.
        # (and the lead_offer counters, which the load's triggers and the final rebuild write)
        for table in [*SEEDED_TABLES, "lead_offer_counts", "lead_offer_count_deltas"]:
            cursor.execute(f"ALTER TABLE {table} OWNER TO {role}")
        cursor.execute(f"ALTER SEQUENCE billing_order_number_seq OWNER TO {role}")
        cursor.execute(f"SET ROLE {role}")

    report = seed_demo(seed_config(tenants=4, leads=600, whale=200, seed=5, months=18))

    assert report.fk_checks_skipped is False
    assert report.frozen is True
    with connection.cursor() as cursor:
        # The deferred foreign-key checks of every loaded row run now (at commit otherwise).
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("RESET ROLE")
    assert LeadOffer.objects.count() == 600
    # Here the load fired the counter triggers too; the rebuild still leaves exact totals.
    assert_counters_match_group_by()


# --- logins --------------------------------------------------------------------------------------


def test_json_logins_authenticate():
    credentials = seed_json(*SMALL)

    assert set(credentials) == {"staff", "tenants"}
    staff = User.objects.get(email=credentials["staff"]["email"])
    assert staff.is_staff and staff.is_superuser
    assert staff.check_password(credentials["staff"]["password"])
    token = ApiToken.objects.get(key_digest=ApiToken.digest(credentials["staff"]["api_token"]))
    assert token.user == staff and token.is_usable
    assert token.key_prefix == credentials["staff"]["api_token"][:12]

    assert len(credentials["tenants"]) == 5
    assert [t["status"] for t in credentials["tenants"]] == ["ACTIVE"] * 4 + ["PENDING"]
    for entry in credentials["tenants"]:
        tenant = Tenant.objects.get(pk=entry["id"])
        assert (tenant.slug, tenant.name) == (entry["slug"], entry["name"])
        owner = User.objects.get(email=entry["owner"]["email"])
        assert owner.email == f"owner@{tenant.slug}.demo"
        assert owner.check_password(entry["owner"]["password"])
        assert TenantMember.objects.get(tenant=tenant, user=owner).role == "OWNER"
        token = ApiToken.objects.get(key_digest=ApiToken.digest(entry["owner"]["api_token"]))
        assert token.user == owner and token.is_usable
    # Only digests are stored.
    assert not ApiToken.objects.filter(key_digest=credentials["staff"]["api_token"]).exists()


def test_json_is_the_only_thing_on_stdout_and_the_summary_goes_to_stderr(capsys):
    out, err = seed(*SMALL, "--json")

    json.loads(out)
    # Nothing reaches the process's own stdout either (`seed_demo --json > logins.json`).
    assert capsys.readouterr().out == ""
    assert "rebuilding" in err
    assert re.search(r"seed_demo: 5 tenants, 1,500 lead_offers, [\d,]+ rows in [\d.]+ s", err)


# --- funnel realism --------------------------------------------------------------------------------


def test_statuses_timestamps_and_previous_statuses_are_consistent():
    seed("--tenants", "6", "--leads", "6000", "--whale", "2000", "--seed", "3")
    now = timezone.now()
    rows = list(
        LeadOffer.objects.values(
            "status", "previous_status", "created_at", "updated_at", "status_changed_at", "qualified_at",
            "score_total", "billing_eligibility", "disqualification_category",
        )
    )  # fmt: skip

    counts = Counter(row["status"] for row in rows)
    assert len(counts) == 13
    share = {status: count / len(rows) for status, count in counts.items()}
    assert 0.06 <= share["SENT_TO_DEVELOPER"] <= 0.14
    assert share["DISQUALIFIED"] + share["STOPPED"] + share["COOLING"] > 0.5
    assert share["PENDING_MAPPING"] < 0.05
    oldest = now - dt.timedelta(days=18 * 30.44 + 1)
    for row in rows:
        assert oldest <= row["created_at"] <= now
        assert row["created_at"] <= row["status_changed_at"] <= now
        assert row["updated_at"] >= row["created_at"]
        if row["previous_status"]:
            assert row["status"] in ALLOWED_TRANSITIONS[row["previous_status"]], row
        if row["status"] in ("LEAD_READY", "SENT_TO_DEVELOPER"):
            assert row["qualified_at"] is not None and row["score_total"] >= 80
        else:
            assert row["qualified_at"] is None
        assert (row["status"] == "DISQUALIFIED") == bool(row["disqualification_category"])
    assert {r["billing_eligibility"] for r in rows if r["status"] == "SENT_TO_DEVELOPER"} <= {
        "CHARGEABLE", "NOT_CHARGEABLE_DUPLICATE", "NOT_CHARGEABLE_SPAM",
    }  # fmt: skip
    # More recent months have more leads.
    first_half = sum(1 for r in rows if r["created_at"] < now - dt.timedelta(days=9 * 30.44))
    assert first_half < len(rows) / 2


def test_deliveries_match_ready_and_delivered_leads():
    seed("--tenants", "6", "--leads", "6000", "--whale", "2000", "--seed", "3")

    ready = LeadOffer.objects.filter(status__in=["LEAD_READY", "SENT_TO_DEVELOPER"])
    assert Delivery.objects.count() == ready.count()
    assert not ready.filter(delivery__isnull=True).exists()
    sent = Delivery.objects.filter(lead_offer__status="SENT_TO_DEVELOPER")
    assert set(sent.values_list("status", flat=True)) <= {"DELIVERED", "REFUNDED"}
    assert not sent.filter(delivered_at__isnull=True).exists()
    waiting = Delivery.objects.filter(lead_offer__status="LEAD_READY")
    assert set(waiting.values_list("status", flat=True)) <= {"PENDING", "FAILED", "DEAD_LETTER"}
    assert not Delivery.objects.filter(status="DEAD_LETTER", dead_letter_at__isnull=True).exists()
    assert DeliveryAttempt.objects.exists()
    # Revenue counts these events by day.
    assert LeadEvent.objects.filter(event_type="DELIVERY_COMPLETED").count() == sent.count()
    assert (
        LeadEvent.objects.filter(event_type="STATUS_CHANGE", details__to="LEAD_READY").count()
        == ready.count()
    )


def test_phones_are_unique_valid_argentine_mobiles():
    book = PhoneBook(random.Random(5))
    phones = [book.next(random.random()) for _ in range(20_000)]

    assert len(set(phones)) == len(phones)
    for phone in phones[:3000]:
        assert normalize_phone(phone) == phone
    # Every area code of the book is valid, including its extreme first digits.
    for area, digits, low, high, _ in PhoneBook.AREAS:
        for first in (low, high):
            for rest in ("0" * (digits - 1), "9" * (digits - 1)):
                phone = f"+549{area}{first}{rest}"
                assert normalize_phone(phone) == phone


# --- ledger ------------------------------------------------------------------------------------------


def test_ledger_is_consistent_with_deliveries_and_balances():
    seed("--tenants", "6", "--leads", "6000", "--whale", "2000", "--seed", "3")

    entries = defaultdict(list)
    for entry in CreditLedger.objects.order_by("tenant_id", "created_at").values():
        entries[entry["tenant_id"]].append(entry)
    balances = {b.tenant_id: b for b in TenantCreditBalance.objects.all()}
    assert set(balances) == set(Tenant.objects.filter(status="ACTIVE").values_list("id", flat=True))
    for tenant_id, rows in entries.items():
        running = 0
        times = [row["created_at"] for row in rows]
        assert len(set(times)) == len(times), "created_at order must be unambiguous"
        for row in rows:
            running += row["amount"]
            assert row["balance_after"] == running >= 0
        balance = balances[tenant_id]
        assert balance.balance == rows[-1]["balance_after"] == sum(row["amount"] for row in rows)
        by_type = Counter()
        for row in rows:
            by_type[row["transaction_type"]] += abs(row["amount"])
        assert balance.total_purchased == by_type["CREDIT_PURCHASE"]
        assert balance.total_consumed == by_type["CREDIT_CONSUMPTION"]
        assert balance.total_refunded == by_type["CREDIT_REFUND"]
        assert balance.total_bonus == by_type["CREDIT_BONUS"] == 5

    charged = Delivery.objects.filter(status__in=["DELIVERED", "REFUNDED"])
    consumptions = CreditLedger.objects.filter(transaction_type="CREDIT_CONSUMPTION")
    assert consumptions.count() == charged.count()
    assert set(consumptions.values_list("delivery_id", "lead_offer_id")) == set(
        charged.values_list("id", "lead_offer_id")
    )
    assert not consumptions.exclude(amount=-1).exists()
    refunds = CreditLedger.objects.filter(transaction_type="CREDIT_REFUND")
    assert set(refunds.values_list("delivery_id", flat=True)) == set(
        Delivery.objects.filter(status="REFUNDED").values_list("id", flat=True)
    )
    purchases = CreditLedger.objects.filter(transaction_type="CREDIT_PURCHASE").select_related(
        "billing_order"
    )
    assert purchases.count() == BillingOrder.objects.count() > 0
    for purchase in purchases:
        assert purchase.billing_order.status == "completed"
        assert purchase.billing_order.credits_purchased == purchase.amount
        assert purchase.billing_order.tenant_id == purchase.tenant_id
        assert re.fullmatch(r"\d{4}-\d{6}", purchase.billing_order.order_number)


def test_order_numbers_come_from_the_sequence():
    seed(*SMALL)

    highest = max(int(n.split("-")[1]) for n in BillingOrder.objects.values_list("order_number", flat=True))
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval('billing_order_number_seq')")
        assert cursor.fetchone()[0] > highest


# --- reproducibility ---------------------------------------------------------------------------------


def snapshot(seed_value: str) -> dict[str, object]:
    with transaction.atomic():
        seed("--tenants", "4", "--leads", "800", "--whale", "300", "--seed", seed_value)
        data = {
            "tenants": sorted(Tenant.objects.values_list("id", "slug")),
            "lead_offers": sorted(LeadOffer.objects.values_list("id", "lead_id", "tenant_id", "status")),
            "phones": sorted(Lead.objects.values_list("phone", flat=True)),
            "ledger": sorted(CreditLedger.objects.values_list("id", "amount", "balance_after")),
        }
        transaction.set_rollback(True)
    return data


def test_the_same_seed_gives_the_same_data_and_another_seed_does_not():
    first = snapshot("11")
    assert not Tenant.objects.exists()
    again = snapshot("11")
    other = snapshot("12")

    assert again == first
    assert set(other["lead_offers"]).isdisjoint(first["lead_offers"])
    assert other["phones"] != first["phones"]


# --- refusals ----------------------------------------------------------------------------------------


def test_if_empty_does_nothing_the_second_time():
    seed(*SMALL)
    counts = (Tenant.objects.count(), LeadOffer.objects.count(), User.objects.count())

    out, _ = seed(*SMALL, "--if-empty")

    assert "already has data" in out
    assert (Tenant.objects.count(), LeadOffer.objects.count(), User.objects.count()) == counts


def test_if_empty_with_json_issues_fresh_working_logins():
    first = seed_json(*SMALL)
    counts = (Tenant.objects.count(), LeadOffer.objects.count(), User.objects.count())

    second = seed_json(*SMALL, "--if-empty")

    assert (Tenant.objects.count(), LeadOffer.objects.count(), User.objects.count()) == counts
    assert second["staff"]["email"] == first["staff"]["email"]
    assert [t["id"] for t in second["tenants"]] == [t["id"] for t in first["tenants"][:3]]
    staff = User.objects.get(email=second["staff"]["email"])
    assert staff.check_password(second["staff"]["password"])
    assert not staff.check_password(first["staff"]["password"])
    assert ApiToken.objects.get(key_digest=ApiToken.digest(second["staff"]["api_token"])).is_usable
    # The tokens printed the first time are revoked, not left lying around.
    assert not ApiToken.objects.get(key_digest=ApiToken.digest(first["staff"]["api_token"])).is_usable
    for entry in second["tenants"]:
        owner = User.objects.get(email=entry["owner"]["email"])
        assert owner.check_password(entry["owner"]["password"])
        assert ApiToken.objects.get(key_digest=ApiToken.digest(entry["owner"]["api_token"])).user == owner


def test_a_second_run_without_if_empty_refuses_and_changes_nothing():
    seed(*SMALL)
    counts = (Tenant.objects.count(), LeadOffer.objects.count(), User.objects.count())

    with pytest.raises(CommandError, match="already has data"):
        seed(*SMALL)

    assert (Tenant.objects.count(), LeadOffer.objects.count(), User.objects.count()) == counts


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--tenants", "0"], "--tenants must be at least 1", id="no_tenants_case"),
        pytest.param(["--leads", "-1"], "--leads cannot be negative", id="negative_leads_case"),
        pytest.param(["--whale", "-5"], "--whale cannot be negative", id="negative_whale_case"),
        pytest.param(["--leads", "10", "--whale", "11"], "cannot exceed --leads", id="whale_too_big_case"),
        pytest.param(["--tenants", "1", "--whale", "5"], "at least 2 tenants", id="whale_alone_case"),
        pytest.param(["--months", "0"], "--months must be between", id="no_months_case"),
        pytest.param(["--leads", "20000001"], "--leads is at most", id="too_many_leads_case"),
        pytest.param(["--tenants", "many"], "invalid int value", id="not_a_number_case"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_error(args, message):
    with pytest.raises(CommandError, match=message):
        seed(*args)

    assert not Tenant.objects.exists()
    assert not User.objects.exists()


def test_zero_leads_still_creates_tenants_and_logins():
    credentials = seed_json("--tenants", "3", "--leads", "0")

    assert Tenant.objects.count() == 3
    assert not LeadOffer.objects.exists()
    assert len(credentials["tenants"]) == 3
    # Only the trial credits.
    assert set(CreditLedger.objects.values_list("transaction_type", "amount", "balance_after")) == {
        ("CREDIT_BONUS", 5, 5)
    }
