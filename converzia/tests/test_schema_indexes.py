"""The index catalog, read from PostgreSQL itself: the indexes we promise exist, and none is redundant.

`SPEC` is the index contract (the performance guide's names plus every index and unique constraint our
models declare, DOMAIN.md §10.17). The duplicate check walks every table of the public schema and
flags an index the planner can always replace with another one on the same table (docs/database.md,
"How the duplicate-index test defines a duplicate").
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.apps import apps
from django.db import connection, models

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class IndexInfo:
    table: str
    name: str
    access_method: str
    is_unique: bool
    is_primary: bool
    # One entry per key column: expression, non-default opclass, non-default collation, order, nulls.
    keys: tuple[str, ...]
    predicate: str | None

    def describe(self) -> str:
        kind = "PRIMARY KEY" if self.is_primary else ("UNIQUE" if self.is_unique else "INDEX")
        where = f" WHERE {self.predicate}" if self.predicate else ""
        return f"{self.table}.{self.name} {kind} {self.access_method} ({', '.join(self.keys)}){where}"


# Key columns of every index, rendered so that two keys compare equal only if an index scan on one
# returns rows in the same order as the other: the column or expression, a non-default operator class
# or collation, DESC, and a NULLS placement that differs from the direction's default.
INDEX_CATALOG_SQL = """
SELECT t.relname,
       i.relname,
       am.amname,
       x.indisunique,
       x.indisprimary,
       pg_get_expr(x.indpred, x.indrelid),
       array(
           SELECT concat_ws(
                      ' ',
                      pg_get_indexdef(x.indexrelid, k.n, true),
                      CASE WHEN NOT opc.opcdefault THEN opc.opcname END,
                      CASE WHEN coll.collname IS NOT NULL AND coll.collname <> 'default'
                           THEN 'COLLATE ' || coll.collname END,
                      CASE WHEN x.indoption[k.n - 1] & 1 = 1 THEN 'DESC' END,
                      CASE WHEN x.indoption[k.n - 1] & 1 = 1 AND x.indoption[k.n - 1] & 2 = 0
                           THEN 'NULLS LAST'
                           WHEN x.indoption[k.n - 1] & 1 = 0 AND x.indoption[k.n - 1] & 2 = 2
                           THEN 'NULLS FIRST' END
                  )
           FROM generate_series(1, x.indnkeyatts) AS k(n)
           JOIN pg_opclass opc ON opc.oid = x.indclass[k.n - 1]
           LEFT JOIN pg_collation coll ON coll.oid = x.indcollation[k.n - 1]
           ORDER BY k.n
       )
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = i.relam
WHERE n.nspname = 'public' AND t.relkind IN ('r', 'p', 'm')
ORDER BY t.relname, i.relname
"""


def index_catalog() -> dict[str, IndexInfo]:
    with connection.cursor() as cursor:
        cursor.execute(INDEX_CATALOG_SQL)
        rows = cursor.fetchall()
    return {
        name: IndexInfo(
            table=table,
            name=name,
            access_method=access_method,
            is_unique=is_unique,
            is_primary=is_primary,
            keys=tuple(keys),
            predicate=predicate,
        )
        for table, name, access_method, is_unique, is_primary, predicate, keys in rows
    }


# Framework and third-party tables: their indexes are not ours to change. Each prefix with its reason.
EXCLUDED_TABLE_PREFIXES: dict[str, str] = {
    "auth_": "django.contrib.auth's own tables (auth_permission, auth_group, ...)",
    "django_": "Django's own tables (sessions, migrations, admin log, content types)",
    "procrastinate_": "the task queue's tables, managed by procrastinate's own migrations",
}

# Known redundant pairs we keep on purpose: (table, shorter index keys, longer index keys) → reason.
ALLOWED_DUPLICATES: dict[tuple[str, tuple[str, ...], tuple[str, ...]], str] = {
    ("users_groups", ("user_id",), ("user_id", "group_id")): (
        "auto-created M2M table of PermissionsMixin.groups; Django always indexes both FK columns of an "
        "auto-created through table, dropping it needs a custom through model, and the table is tiny"
    ),
    ("users_user_permissions", ("user_id",), ("user_id", "permission_id")): (
        "auto-created M2M table of PermissionsMixin.user_permissions; same reason as users_groups"
    ),
}


def is_covered_by(shorter: IndexInfo, longer: IndexInfo) -> bool:
    """True when `longer` can do everything `shorter` does, so `shorter` only costs writes.

    Same table, access method and predicate; `shorter`'s keys equal `longer`'s or are a leading prefix
    of them (only btree can use a prefix); and `shorter` is not a unique index enforcing a narrower
    constraint. Two unique indexes with identical keys (including a copy of the primary key) are
    duplicates too.
    """
    if shorter.name == longer.name or shorter.table != longer.table:
        return False
    if shorter.access_method != longer.access_method or shorter.predicate != longer.predicate:
        return False
    size = len(shorter.keys)
    if shorter.keys == longer.keys:
        # Identical keys: the non-unique copy is redundant, or either of two unique copies; report
        # each unordered pair once, keeping the primary key (or the first name) as the "longer" side.
        if shorter.is_unique != longer.is_unique:
            return not shorter.is_unique
        if shorter.is_primary != longer.is_primary:
            return longer.is_primary
        return shorter.name > longer.name
    if shorter.access_method != "btree" or size > len(longer.keys):
        return False
    return longer.keys[:size] == shorter.keys and not shorter.is_unique


def redundant_index_pairs(catalog: dict[str, IndexInfo]) -> list[tuple[IndexInfo, IndexInfo]]:
    indexes = [
        index
        for index in catalog.values()
        if not any(index.table.startswith(prefix) for prefix in EXCLUDED_TABLE_PREFIXES)
    ]
    return [
        (shorter, longer)
        for shorter in indexes
        for longer in indexes
        if is_covered_by(shorter, longer)
        and (shorter.table, shorter.keys, longer.keys) not in ALLOWED_DUPLICATES
    ]


@dataclass(frozen=True)
class Expected:
    table: str
    keys: tuple[str, ...]
    is_unique: bool = False
    # Fragments the rendered predicate must contain; None means "not a partial index".
    predicate: tuple[str, ...] | None = None


# The index contract. The first five are the names PERFORMANCE_GUIDE.md promises; the rest are
# DOMAIN.md §10.17's list as our models define it, plus every other named index or unique constraint
# our models declare. What §10.17 lists and we dropped on purpose is in docs/database.md.
SPEC: dict[str, Expected] = {
    # -- the guide's names
    "idx_lead_offers_tenant_status_updated": Expected(
        "lead_offers", ("tenant_id", "status", "updated_at DESC", "id DESC")
    ),
    "idx_credit_ledger_tenant_type_created": Expected(
        "credit_ledger", ("tenant_id", "transaction_type", "created_at DESC")
    ),
    "idx_deliveries_status_created": Expected("deliveries", ("status", "created_at DESC")),
    "idx_lead_sources_leadgen_id": Expected(
        "lead_sources", ("leadgen_id",), predicate=("leadgen_id IS NOT NULL",)
    ),
    "idx_ad_offer_map_ad_id": Expected("ad_offer_map", ("ad_id",), is_unique=True),
    # -- lead_offers
    "idx_lead_offers_tenant_updated": Expected("lead_offers", ("tenant_id", "updated_at DESC", "id DESC")),
    "idx_lead_offers_tenant_status_offer": Expected("lead_offers", ("tenant_id", "status", "offer_id")),
    "idx_lead_offers_offer": Expected("lead_offers", ("offer_id",)),
    "idx_lead_offers_tenant_created": Expected("lead_offers", ("tenant_id", "created_at")),
    "idx_lead_offers_tenant_disqualified": Expected(
        "lead_offers", ("tenant_id", "disqualification_category"), predicate=("'DISQUALIFIED'",)
    ),
    "idx_lead_offers_qualified_at": Expected(
        "lead_offers", ("qualified_at",), predicate=("qualified_at IS NOT NULL",)
    ),
    "idx_lead_offers_next_attempt": Expected(
        "lead_offers",
        ("next_attempt_at",),
        predicate=("next_attempt_at IS NOT NULL", "'STOPPED'", "'DISQUALIFIED'", "'SENT_TO_DEVELOPER'"),
    ),
    "lead_offers_lead_offer_tenant_uniq": Expected(
        "lead_offers", ("lead_id", "offer_id", "tenant_id"), is_unique=True
    ),
    "idx_lead_offers_unique_unmapped_per_tenant": Expected(
        "lead_offers", ("tenant_id", "lead_id"), is_unique=True, predicate=("offer_id IS NULL",)
    ),
    # -- lead_offer counters (leads/counters.py)
    "lead_offer_counts_pkey": Expected(
        "lead_offer_counts", ("tenant_id", "status", "disqualification_category"), is_unique=True
    ),
    "idx_lead_offer_deltas_tenant": Expected("lead_offer_count_deltas", ("tenant_id",)),
    # -- lead_events
    "idx_lead_events_lead_offer_created": Expected("lead_events", ("lead_offer_id", "created_at")),
    "idx_lead_events_tenant_type_created": Expected("lead_events", ("tenant_id", "event_type", "created_at")),
    "idx_lead_events_type_created": Expected("lead_events", ("event_type", "created_at")),
    # -- lead_sources
    "idx_lead_sources_unique_tenant_leadgen": Expected(
        "lead_sources", ("tenant_id", "leadgen_id"), is_unique=True, predicate=("leadgen_id IS NOT NULL",)
    ),
    "idx_lead_sources_tenant_created": Expected("lead_sources", ("tenant_id", "created_at DESC")),
    "idx_lead_sources_tenant_ad": Expected("lead_sources", ("tenant_id", "ad_id"), predicate=("ad_id",)),
    # -- leads, offers
    "leads_phone_key": Expected("leads", ("phone",), is_unique=True),
    "offers_tenant_slug_uniq": Expected("offers", ("tenant_id", "slug"), is_unique=True),
    # -- tenants and members
    "tenants_slug_key": Expected("tenants", ("slug",), is_unique=True),
    "tenant_members_tenant_user_uniq": Expected("tenant_members", ("tenant_id", "user_id"), is_unique=True),
    "idx_tenant_members_user_active": Expected(
        "tenant_members", ("user_id",), predicate=("status", "'ACTIVE'")
    ),
    "idx_tenant_members_tenant_active_created": Expected(
        "tenant_members", ("tenant_id", "created_at"), predicate=("status", "'ACTIVE'")
    ),
    # -- billing
    "idx_billing_orders_tenant_status_paid": Expected(
        "billing_orders", ("tenant_id", "status", "paid_at DESC NULLS LAST")
    ),
    "billing_orders_order_number_key": Expected("billing_orders", ("order_number",), is_unique=True),
    "idx_credit_ledger_tenant_created": Expected(
        "credit_ledger", ("tenant_id", "created_at DESC", "id DESC")
    ),
    "idx_credit_ledger_delivery_consumption": Expected(
        "credit_ledger", ("delivery_id",), is_unique=True, predicate=("'CREDIT_CONSUMPTION'",)
    ),
    "idx_credit_ledger_delivery_refund": Expected(
        "credit_ledger", ("delivery_id",), is_unique=True, predicate=("'CREDIT_REFUND'",)
    ),
    "idx_credit_ledger_order_purchase": Expected(
        "credit_ledger", ("billing_order_id",), is_unique=True, predicate=("'CREDIT_PURCHASE'",)
    ),
    "tenant_credit_balances_pkey": Expected("tenant_credit_balances", ("tenant_id",), is_unique=True),
    "tenant_pricing_tenant_id_key": Expected("tenant_pricing", ("tenant_id",), is_unique=True),
    "platform_costs_period_uniq": Expected(
        "platform_costs", ("tenant_id", "platform", "ad_id", "date_start", "date_end"), is_unique=True
    ),
    "idx_platform_costs_date": Expected("platform_costs", ("date_start", "date_end")),
    "idx_platform_costs_date_end": Expected("platform_costs", ("date_end",)),
    "idx_credit_ledger_charges_created": Expected(
        "credit_ledger", ("created_at",), predicate=("'CREDIT_CONSUMPTION'", "'CREDIT_REFUND'")
    ),
    "idx_deliveries_delivered_at": Expected(
        "deliveries", ("delivered_at",), predicate=("delivered_at IS NOT NULL",)
    ),
    "idx_credit_alerts_tenant_created": Expected("credit_alerts", ("tenant_id", "created_at DESC")),
    "credit_alerts_ledger_entry_id_key": Expected("credit_alerts", ("ledger_entry_id",), is_unique=True),
    # -- deliveries
    "idx_deliveries_tenant_status_created": Expected(
        "deliveries", ("tenant_id", "status", "created_at DESC")
    ),
    "idx_deliveries_due": Expected("deliveries", ("next_attempt_at",), predicate=("'PENDING'", "'FAILED'")),
    "idx_deliveries_in_flight": Expected("deliveries", ("tenant_id",), predicate=("claimed_until",)),
    "deliveries_lead_offer_id_key": Expected("deliveries", ("lead_offer_id",), is_unique=True),
    "delivery_destinations_tenant_type_uniq": Expected(
        "delivery_destinations", ("tenant_id", "destination_type"), is_unique=True
    ),
    "delivery_attempts_delivery_number_uniq": Expected(
        "delivery_attempts", ("delivery_id", "attempt_number"), is_unique=True
    ),
    # -- the Meta webhook inbox
    "idx_inbox_events_pending": Expected("webhook_inbox_events", ("received_at",), predicate=("'PENDING'",)),
    "webhook_inbox_changes_event_position": Expected(
        "webhook_inbox_changes", ("event_id", '"position"'), is_unique=True
    ),
    "idx_inbox_changes_leadgen_id": Expected("webhook_inbox_changes", ("leadgen_id",)),
    "idx_inbox_changes_tenant_created": Expected("webhook_inbox_changes", ("tenant_id", "created_at DESC")),
    "idx_inbox_changes_parked": Expected(
        "webhook_inbox_changes", ("ad_id", "created_at"), predicate=("'UNROUTED'", "'FAILED'")
    ),
}

# The models whose declared indexes and constraints SPEC must list, every one of them.
SPEC_MODELS = (
    "converzia.Tenant",
    "converzia.TenantMember",
    "leads.Offer",
    "leads.AdOfferMap",
    "leads.Lead",
    "leads.LeadSource",
    "leads.LeadOffer",
    "leads.LeadEvent",
    "leads.LeadOfferCount",
    "leads.LeadOfferCountDelta",
    "leads.InboxEvent",
    "leads.InboxChange",
    "billing.TenantPricing",
    "billing.BillingOrder",
    "billing.CreditLedger",
    "billing.TenantCreditBalance",
    "billing.PlatformCost",
    "billing.CreditAlert",
    "deliveries.DeliveryDestination",
    "deliveries.Delivery",
    "deliveries.DeliveryAttempt",
)


def test_every_specified_index_exists_with_its_definition():
    catalog = index_catalog()
    problems = []
    for name, expected in SPEC.items():
        found = catalog.get(name)
        if found is None:
            problems.append(f"{name}: missing (expected on {expected.table})")
            continue
        actual = (found.table, found.keys, found.is_unique, found.access_method)
        wanted = (expected.table, expected.keys, expected.is_unique, "btree")
        if actual != wanted:
            problems.append(f"{name}: expected {wanted}, found {actual}")
        if expected.predicate is None and found.predicate is not None:
            problems.append(f"{name}: expected a full index, found WHERE {found.predicate}")
        if expected.predicate is not None:
            missing = [part for part in expected.predicate if part not in (found.predicate or "")]
            if missing:
                problems.append(f"{name}: predicate {found.predicate!r} lacks {missing}")
    assert problems == []


def test_spec_lists_every_index_and_unique_constraint_the_models_declare():
    declared = set()
    for label in SPEC_MODELS:
        meta = apps.get_model(label)._meta
        declared |= {index.name for index in meta.indexes}
        declared |= {c.name for c in meta.constraints if isinstance(c, models.UniqueConstraint)}
    spec_names = {name for name in SPEC if not name.endswith(("_key", "_pkey"))}
    assert sorted(declared - spec_names) == []
    assert sorted(spec_names - declared) == []


def test_no_index_duplicates_another_or_the_primary_key():
    pairs = redundant_index_pairs(index_catalog())
    report = [f"{shorter.describe()}  is covered by  {longer.describe()}" for shorter, longer in pairs]
    assert report == [], "redundant indexes:\n" + "\n".join(report)


def test_allowed_duplicates_still_exist_so_the_allow_list_stays_honest():
    catalog = index_catalog()
    present = {
        (shorter.table, shorter.keys, longer.keys)
        for shorter in catalog.values()
        for longer in catalog.values()
        if is_covered_by(shorter, longer)
    }
    assert sorted(set(ALLOWED_DUPLICATES) - present) == []


def test_ad_offer_map_has_no_second_index_on_ad_id():
    # v1 added a partial `(ad_id) WHERE is_active` next to the unique `(ad_id)`; the unique one serves both.
    on_ad_id = sorted(
        index.name
        for index in index_catalog().values()
        if index.table == "ad_offer_map" and index.keys[:1] == ("ad_id",)
    )
    assert on_ad_id == ["idx_ad_offer_map_ad_id"]


def test_every_tenant_id_foreign_key_is_the_leading_column_of_some_index():
    # Tenant deletes cascade, and every tenant-scoped read filters by tenant_id first.
    catalog = index_catalog()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.conrelid::regclass::text
            FROM pg_constraint c
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
            WHERE c.contype = 'f' AND c.confrelid = 'tenants'::regclass AND a.attname = 'tenant_id'
            """
        )
        tables = sorted(row[0] for row in cursor.fetchall())
    unindexed = [
        table
        for table in tables
        if not any(
            index.table == table and index.keys[:1] == ("tenant_id",) and index.predicate is None
            for index in catalog.values()
        )
    ]
    assert tables != []
    assert unindexed == []


# -- the detector itself: a deliberate duplicate must be caught, and look-alikes must not -------------


def flagged_pairs() -> set[tuple[str, str]]:
    return {(shorter.name, longer.name) for shorter, longer in redundant_index_pairs(index_catalog())}


def _create_index(sql: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql)


def test_detector_flags_a_prefix_of_a_composite_index():
    _create_index("CREATE INDEX tmp_lead_offers_tenant ON lead_offers (tenant_id)")
    flagged = flagged_pairs()
    assert ("tmp_lead_offers_tenant", "idx_lead_offers_tenant_status_offer") in flagged
    assert ("tmp_lead_offers_tenant", "idx_lead_offers_unique_unmapped_per_tenant") not in flagged


def test_detector_flags_copies_of_the_primary_key():
    _create_index("CREATE INDEX tmp_tenants_id ON tenants (id)")
    _create_index("CREATE UNIQUE INDEX tmp_tenants_id_unique ON tenants (id)")
    flagged = flagged_pairs()
    assert ("tmp_tenants_id", "tenants_pkey") in flagged
    assert ("tmp_tenants_id_unique", "tenants_pkey") in flagged
    assert ("tenants_pkey", "tmp_tenants_id_unique") not in flagged


def test_detector_ignores_different_order_opclass_or_predicate():
    _create_index("CREATE INDEX tmp_deliveries_status_asc ON deliveries (status, created_at)")
    _create_index(
        "CREATE INDEX tmp_deliveries_status_pattern"
        " ON deliveries (status varchar_pattern_ops, created_at DESC)"
    )
    _create_index("CREATE INDEX tmp_lead_sources_leadgen_all ON lead_sources (leadgen_id)")
    _create_index("CREATE UNIQUE INDEX tmp_deliveries_status_unique ON deliveries (status) WHERE false")
    flagged = {s.name for s, _ in redundant_index_pairs(index_catalog())}
    assert (
        flagged
        & {
            "tmp_deliveries_status_asc",
            "tmp_deliveries_status_pattern",
            "tmp_lead_sources_leadgen_all",
            "tmp_deliveries_status_unique",
        }
        == set()
    )


def test_detector_keeps_a_unique_prefix_but_flags_an_equal_non_unique_copy():
    # A unique (tenant_id, lead_id) WHERE offer_id IS NULL enforces a rule: it must stay even though a
    # wider index starts with the same columns; a non-unique copy of it is pure write cost.
    _create_index(
        "CREATE INDEX tmp_lead_offers_wide ON lead_offers (tenant_id, lead_id, status) WHERE offer_id IS NULL"
    )
    _create_index(
        "CREATE INDEX tmp_lead_offers_copy ON lead_offers (tenant_id, lead_id) WHERE offer_id IS NULL"
    )
    flagged = flagged_pairs()
    assert ("idx_lead_offers_unique_unmapped_per_tenant", "tmp_lead_offers_wide") not in flagged
    assert ("tmp_lead_offers_copy", "idx_lead_offers_unique_unmapped_per_tenant") in flagged
    assert ("tmp_lead_offers_copy", "tmp_lead_offers_wide") in flagged
