"""`manage.py explain_check` (converzia/db/explain.py, portal/explain_patterns.py) on seeded data.

The module seeds 20,000 lead_offers over 5 tenants once (`seed_demo`, which also ANALYZEs), inside a
transaction that is rolled back when the module ends, so the rest of the suite still sees an empty
database. Each test runs in a savepoint of it (pytest-django's `db`), which is what lets a test
DROP an index and have it back afterwards.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from converzia.db.explain import (
    ERROR,
    FAIL,
    OK,
    SKIP,
    WARN,
    Expect,
    ExplainRun,
    PatternResult,
    QueryPattern,
    Statement,
    Thresholds,
    patterns,
    plan_check,
)
from deliveries.models import Delivery

GUIDE_PATTERNS = {
    "guide.lead_offers_tenant_status",
    "guide.credit_ledger_tenant",
    "guide.deliveries_status",
    "guide.lead_sources_leadgen",
    "guide.ad_offer_map_ad",
}
# Patterns on tables the seed makes larger than --large-rows: their index is really validated.
VALIDATED_ON_SEED = {
    "guide.lead_offers_tenant_status",
    "portal.leads.list",
    "portal.leads.list.cursor",
    "portal.leads.list.status_cursor",
    "portal.leads.list.stage",
    "portal.leads.list.created",
    "portal.leads.list.offer",
    "portal.leads.detail",
    "portal.leads.detail.timeline",
    "portal.stats.created",
    "portal.stats.delivered",
    "portal.funnel",
    "portal.funnel.created",
    "ingestion.person_rows",
    "guide.lead_sources_leadgen",
}


@pytest.fixture(scope="module")
def seeded(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            call_command(
                "seed_demo",
                *("--tenants", "5", "--leads", "20000", "--seed", "1", "--no-progress"),
                stdout=io.StringIO(),
                stderr=io.StringIO(),
            )
            yield
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


@pytest.fixture
def check(seeded, db):
    """`check(*args)` → (exit code, parsed --json output)."""

    def run(*args: str) -> tuple[int, dict[str, Any]]:
        out = io.StringIO()
        try:
            call_command("explain_check", "--json", *args, stdout=out, stderr=io.StringIO())
            code = 0
        except CommandError as exc:
            code = exc.returncode
        return code, json.loads(out.getvalue())

    return run


def by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {result["name"]: result for result in document["results"]}


def test_every_pattern_passes_on_seeded_data(check):
    code, document = check()
    results = by_name(document)
    assert code == 0, [(r["name"], r["notes"]) for r in document["results"] if r["status"] in (FAIL, ERROR)]
    assert set(results) == set(patterns())
    assert GUIDE_PATTERNS <= set(results)
    for name in VALIDATED_ON_SEED:
        assert results[name]["status"] in (OK, WARN), (name, results[name]["notes"])
    # A SKIP always says why.
    for result in results.values():
        if result["status"] == SKIP:
            assert any(note["level"] == SKIP and note["message"] for note in result["notes"]), result
    # The lead list uses the index its keyset order was designed for; each result carries its SQL,
    # its parameters and the full plan.
    status_list = results["guide.lead_offers_tenant_status"]
    assert "idx_lead_offers_tenant_status_updated" in status_list["indexes_used"]
    assert status_list["sql"].startswith("SELECT") and status_list["params"]
    assert status_list["plan"]["Plan"]["Node Type"] == "Limit"
    assert status_list["rows"] == 51  # page_size + 1
    assert document["summary"][FAIL] == 0 and sum(document["summary"].values()) == len(results)


def test_a_dropped_index_fails_the_check(check):
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX idx_lead_offers_tenant_status_updated")
    code, document = check("--pattern", "guide.lead_offers_tenant_status")
    (result,) = document["results"]
    assert code == 1
    assert result["status"] == FAIL
    assert "idx_lead_offers_tenant_status_updated" not in result["indexes_used"]
    assert any(
        note["level"] == FAIL and "expected idx_lead_offers_tenant_status_updated" in note["message"]
        for note in result["notes"]
    )


def test_the_index_is_back_after_the_drop_test(check):
    # The DROP above was rolled back with its test's savepoint.
    code, document = check("--pattern", "guide.lead_offers_tenant_status")
    assert code == 0 and document["results"][0]["status"] == OK


def test_pattern_selects_by_name_and_glob(check):
    code, document = check("--pattern", "portal.leads.list*", "--pattern", "deliveries.claim")
    names = [result["name"] for result in document["results"]]
    expected = sorted(n for n in patterns() if n.startswith("portal.leads.list")) + ["deliveries.claim"]
    assert sorted(names) == sorted(expected)
    assert code == 0


def test_unknown_pattern_lists_the_known_ones(seeded, db):
    with pytest.raises(CommandError) as raised:
        call_command("explain_check", "--pattern", "no.such.pattern", stdout=io.StringIO())
    message = str(raised.value)
    assert "'no.such.pattern'" in message
    assert "guide.lead_offers_tenant_status" in message and "deliveries.claim" in message


def test_the_claim_is_explained_but_nothing_is_claimed(check):
    claimed = Delivery.objects.filter(claimed_until__isnull=False).count()
    code, document = check("--pattern", "deliveries.claim")
    (result,) = document["results"]
    assert "SKIP LOCKED" in result["sql"]
    assert "idx_deliveries_due" in result["indexes_used"]
    assert Delivery.objects.filter(claimed_until__isnull=False).count() == claimed


def test_a_timeout_is_an_error(check):
    code, document = check("--pattern", "portal.funnel", "--timeout-ms", "1")
    (result,) = document["results"]
    assert code == 1
    assert result["status"] == ERROR
    assert "timed out" in result["notes"][0]["message"]


def test_table_output(seeded, db):
    out = io.StringIO()
    call_command("explain_check", "--pattern", "portal.billing.*", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["pattern", "status", "time"]
    assert any(line.startswith("portal.billing.ledger ") and " OK " in line for line in lines)
    assert lines[-1].endswith("0 FAIL, 0 ERROR")


# --- the checklist on hand-written plans (no database) -----------------------------------------------


class _Sizes(ExplainRun):
    def __init__(self, sizes: dict[str, float], thresholds: Thresholds | None = None) -> None:
        super().__init__(thresholds or Thresholds())
        self._sizes = sizes

    def index_exists(self, name: str) -> bool:
        return True


def _checked(plan: dict[str, Any], sizes: dict[str, float], *expect: Expect) -> PatternResult:
    pattern = QueryPattern(name="t", description="", expect=expect, build=lambda run: Statement(""))
    result = PatternResult(name="t", description="", status=OK)
    plan_check({"Plan": plan, "Execution Time": 1.0}, pattern, _Sizes(sizes), result)
    return result


def _scan(node_type: str, relation: str, estimated: int, actual: int, **extra: Any) -> dict[str, Any]:
    return {
        "Node Type": node_type,
        "Relation Name": relation,
        "Plan Rows": estimated,
        "Actual Rows": actual,
        "Actual Loops": 1,
        **extra,
    }


def test_seq_scan_fails_only_on_large_tables():
    expected = Expect("leads", ("leads_pkey",), min_rows=1)
    small = _checked(_scan("Seq Scan", "offers", 10, 10), {"offers": 50})
    large = _checked(_scan("Seq Scan", "leads", 10, 10), {"leads": 50_000}, expected)
    # A join partner (no index expected on it) only warns until seq_scan_fail_rows.
    partner = _checked(_scan("Seq Scan", "leads", 10, 10), {"leads": 50_000})
    huge_partner = _checked(_scan("Seq Scan", "leads", 10, 10), {"leads": 500_000})
    assert [f.level for f in small.findings] == []
    assert [f.level for f in large.findings] == [FAIL, FAIL]  # the seq scan, and the missed index
    assert [f.level for f in partner.findings] == [WARN]
    assert [f.level for f in huge_partner.findings] == [FAIL]


def test_missed_index_is_skip_on_a_small_table_and_fail_on_a_large_one():
    plan = _scan("Seq Scan", "offers", 3, 3)
    skipped = _checked(plan, {"offers": 40}, Expect("offers", ("offers_tenant_slug_uniq",)))
    failed = _checked(plan, {"offers": 40}, Expect("offers", ("offers_tenant_slug_uniq",), min_rows=10))
    assert [f.level for f in skipped.findings] == [SKIP]
    assert [f.level for f in failed.findings] == [FAIL]


def test_misestimates_warn_except_below_a_limit_that_stopped_early():
    scan = _scan("Index Scan", "lead_offers", 5_000, 51, **{"Index Name": "idx"})
    limited = _checked(
        {"Node Type": "Limit", "Plan Rows": 51, "Actual Rows": 51, "Actual Loops": 1, "Plans": [scan]}, {}
    )
    bare = _checked(scan, {})
    assert limited.findings == []
    assert [f.level for f in bare.findings] == [WARN]


def test_spills_nested_loops_and_heap_fetches_warn():
    spill = {
        "Node Type": "Sort",
        "Sort Method": "external merge",
        "Sort Space Type": "Disk",
        "Sort Space Used": 9000,
    }
    outer = _scan("Seq Scan", "a", 5_000, 5_000)
    inner = _scan("Index Only Scan", "b", 1, 1, **{"Index Name": "idx_b", "Heap Fetches": 7})
    loop = {"Node Type": "Nested Loop", "Plan Rows": 5_000, "Actual Rows": 5_000, "Actual Loops": 1}
    result = _checked(
        {**spill, "Plans": [{**loop, "Plans": [outer, inner]}]}, {}, Expect("b", ("idx_b",), index_only=True)
    )
    messages = " | ".join(f.message for f in result.findings)
    assert {f.level for f in result.findings} == {WARN}
    assert "spilled to disk" in messages and "Nested Loop over 5,000 outer rows" in messages
    assert "7 heap fetches" in messages
