"""Maintained per-tenant lead_offer counts (docs/database.md, leads/counters.py).

`lead_offer_counts_track` appends one row per side of a change to lead_offer_count_deltas (+1 for the
new status/category, -1 for the old): append-only, so concurrent transactions never wait on a shared
counter row and two opposite transitions cannot deadlock. Compaction folds the deltas into
lead_offer_counts; readers sum both in one statement. The category is tracked only for DISQUALIFIED
rows ('' otherwise), so a category edit on another status writes nothing.

The backfill runs in this migration's transaction after CREATE TRIGGER, which holds a SHARE ROW
EXCLUSIVE lock on lead_offers until commit: no write can slip between the count and the trigger.
(At 2M rows that blocks lead_offers writes for about a second.)
"""

from django.db import migrations, models

LEAD_OFFER_STATUS_CHOICES = [
    (value, value.replace("_", " ").title())
    for value in (
        "PENDING_MAPPING",
        "TO_BE_CONTACTED",
        "CONTACTED",
        "ENGAGED",
        "QUALIFYING",
        "SCORED",
        "LEAD_READY",
        "SENT_TO_DEVELOPER",
        "COOLING",
        "REACTIVATION",
        "DISQUALIFIED",
        "STOPPED",
        "HUMAN_HANDOFF",
    )
]

# Advisory key 1002 is converzia.db.locks.AdvisoryLock.LEAD_OFFER_COUNTS (no app imports here).
TRIGGER_SQL = r"""
CREATE FUNCTION lead_offer_counts_track() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO lead_offer_count_deltas (tenant_id, status, disqualification_category, delta)
        VALUES (NEW.tenant_id, NEW.status,
                CASE WHEN NEW.status = 'DISQUALIFIED' THEN NEW.disqualification_category ELSE '' END, 1);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO lead_offer_count_deltas (tenant_id, status, disqualification_category, delta)
        VALUES (OLD.tenant_id, OLD.status,
                CASE WHEN OLD.status = 'DISQUALIFIED' THEN OLD.disqualification_category ELSE '' END, -1);
    ELSE
        INSERT INTO lead_offer_count_deltas (tenant_id, status, disqualification_category, delta)
        VALUES (OLD.tenant_id, OLD.status,
                CASE WHEN OLD.status = 'DISQUALIFIED' THEN OLD.disqualification_category ELSE '' END, -1),
               (NEW.tenant_id, NEW.status,
                CASE WHEN NEW.status = 'DISQUALIFIED' THEN NEW.disqualification_category ELSE '' END, 1);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION lead_offer_counts_reset() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- TRUNCATE fires no row triggers: the counts of an emptied table are empty. The lock waits out a
    -- compaction in flight (it would otherwise re-add what it folds after this DELETE).
    PERFORM pg_advisory_xact_lock(1002);
    DELETE FROM lead_offer_count_deltas;
    DELETE FROM lead_offer_counts;
    RETURN NULL;
END
$$;

CREATE TRIGGER lead_offer_counts_insert AFTER INSERT ON lead_offers
    FOR EACH ROW EXECUTE FUNCTION lead_offer_counts_track();
CREATE TRIGGER lead_offer_counts_delete AFTER DELETE ON lead_offers
    FOR EACH ROW EXECUTE FUNCTION lead_offer_counts_track();
-- Only updates that move a row between counters: other column updates skip the function call.
CREATE TRIGGER lead_offer_counts_update
    AFTER UPDATE OF status, disqualification_category, tenant_id ON lead_offers
    FOR EACH ROW
    WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id
          OR OLD.status IS DISTINCT FROM NEW.status
          OR (NEW.status = 'DISQUALIFIED'
              AND OLD.disqualification_category IS DISTINCT FROM NEW.disqualification_category))
    EXECUTE FUNCTION lead_offer_counts_track();
CREATE TRIGGER lead_offer_counts_truncate AFTER TRUNCATE ON lead_offers
    FOR EACH STATEMENT EXECUTE FUNCTION lead_offer_counts_reset();

INSERT INTO lead_offer_counts (tenant_id, status, disqualification_category, n)
SELECT tenant_id, status, CASE WHEN status = 'DISQUALIFIED' THEN disqualification_category ELSE '' END,
       count(*)
FROM lead_offers
GROUP BY 1, 2, 3;
"""

DROP_TRIGGER_SQL = r"""
DROP TRIGGER IF EXISTS lead_offer_counts_truncate ON lead_offers;
DROP TRIGGER IF EXISTS lead_offer_counts_update ON lead_offers;
DROP TRIGGER IF EXISTS lead_offer_counts_delete ON lead_offers;
DROP TRIGGER IF EXISTS lead_offer_counts_insert ON lead_offers;
DROP FUNCTION IF EXISTS lead_offer_counts_reset();
DROP FUNCTION IF EXISTS lead_offer_counts_track();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("converzia", "0005_pg_stat_statements"),
        ("leads", "0007_lead_search_trgm"),
    ]

    operations = [
        migrations.CreateModel(
            name="LeadOfferCount",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "tenant_id",
                        "status",
                        "disqualification_category",
                        blank=True,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                (
                    "tenant",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.deletion.DO_NOTHING,
                        related_name="+",
                        to="converzia.tenant",
                    ),
                ),
                ("status", models.CharField(choices=LEAD_OFFER_STATUS_CHOICES, max_length=20)),
                ("disqualification_category", models.CharField(blank=True, max_length=32)),
                ("n", models.BigIntegerField()),
            ],
            options={"db_table": "lead_offer_counts"},
        ),
        migrations.CreateModel(
            name="LeadOfferCountDelta",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                (
                    "tenant",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.deletion.DO_NOTHING,
                        related_name="+",
                        to="converzia.tenant",
                    ),
                ),
                ("status", models.CharField(choices=LEAD_OFFER_STATUS_CHOICES, max_length=20)),
                ("disqualification_category", models.CharField(blank=True, max_length=32)),
                ("delta", models.IntegerField()),
            ],
            options={
                "db_table": "lead_offer_count_deltas",
                "indexes": [models.Index(fields=["tenant"], name="idx_lead_offer_deltas_tenant")],
            },
        ),
        migrations.RunSQL(TRIGGER_SQL, reverse_sql=DROP_TRIGGER_SQL),
    ]
