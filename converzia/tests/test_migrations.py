"""Migrations are reviewed artifacts: in sync with the models, named by hand, and reversible."""

from __future__ import annotations

import re

import pytest
from django.core.management import call_command
from django.db import connection, migrations
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader

OUR_APPS = ("converzia", "leads", "billing", "deliveries", "portal")
HAND_NAMED = re.compile(r"^\d{4}_[a-z][a-z0-9_]*$")


def our_migrations() -> dict[tuple[str, str], migrations.Migration]:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    return {key: migration for key, migration in loader.disk_migrations.items() if key[0] in OUR_APPS}


def flat_operations(operations: list[migrations.operations.base.Operation]):
    """Every operation, looking inside SeparateDatabaseAndState (its database side is what runs)."""
    for operation in operations:
        if isinstance(operation, migrations.SeparateDatabaseAndState):
            yield from flat_operations(operation.database_operations)
        else:
            yield operation


@pytest.mark.django_db
def test_models_and_migrations_are_in_sync(capsys):
    # `--check` exits with status 1 when a model change has no migration.
    call_command("makemigrations", check=True, dry_run=True, verbosity=1)
    assert capsys.readouterr().out.strip() == "No changes detected"


def test_every_migration_is_named_by_hand():
    names = sorted(f"{app}.{name}" for app, name in our_migrations())
    badly_named = [name for name in names if not HAND_NAMED.match(name.split(".", 1)[1]) or "auto_" in name]
    assert "leads.0002_lead_offer_status_trigger" in names
    assert badly_named == []


def test_every_operation_is_reversible_and_raw_sql_says_how():
    irreversible = []
    raw_sql_without_reverse = []
    for (app, name), migration in sorted(our_migrations().items()):
        for operation in flat_operations(migration.operations):
            if not operation.reversible:
                irreversible.append(f"{app}.{name}: {operation.describe()}")
            if isinstance(operation, migrations.RunSQL) and not operation.reverse_sql:
                raw_sql_without_reverse.append(f"{app}.{name}: {operation.describe()}")
    assert irreversible == []
    assert raw_sql_without_reverse == []


def test_raw_sql_migrations_exist_for_each_trigger():
    raw_sql = sorted(
        f"{app}.{name}"
        for (app, name), migration in our_migrations().items()
        if any(isinstance(op, migrations.RunSQL) for op in flat_operations(migration.operations))
    )
    assert {
        "billing.0002_ledger_immutable_and_order_numbers",
        "deliveries.0002_delivery_status_trigger",
        "leads.0002_lead_offer_status_trigger",
    } <= set(raw_sql)


def _database_objects() -> dict[str, list[str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname IN "
            "('lead_offers_status_transition', 'deliveries_status_transition', 'credit_ledger_immutable') "
            "ORDER BY tgname"
        )
        triggers = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT relname FROM pg_class WHERE relname = 'billing_order_number_seq'")
        sequences = [row[0] for row in cursor.fetchall()]
    return {"triggers": triggers, "sequences": sequences}


@pytest.mark.django_db(transaction=True)
def test_trigger_migrations_round_trip_backwards_and_forwards():
    """Unapply the raw-SQL migrations for real, check they cleaned up, then reapply them."""
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    before = _database_objects()
    assert before == {
        "triggers": [
            "credit_ledger_immutable",
            "deliveries_status_transition",
            "lead_offers_status_transition",
        ],
        "sequences": ["billing_order_number_seq"],
    }
    before_trigger_migrations = [(app, "0001_initial") for app in ("leads", "billing", "deliveries")]
    try:
        executor.migrate(before_trigger_migrations)
        assert _database_objects() == {"triggers": [], "sequences": []}
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(leaves)
    assert _database_objects() == before
