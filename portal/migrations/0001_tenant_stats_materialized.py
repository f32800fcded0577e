"""`tenant_stats_materialized`: one row per tenant and LOCAL day, for dashboards (decision D8b).

Built from three separately pre-aggregated sets joined on (tenant_id, day), never by joining the
child tables to each other (v1's cartesian fan-out, DOMAIN.md §10.8):
  - lead_offers by the local day of created_at, counted by CURRENT status and funnel stage;
  - deliveries by the local day of delivered_at (completed deliveries only);
  - credit_ledger by the local day of created_at, summed by transaction type.
"Today", "last 7 days" and so on are summed at read time in the tenant's zone, never frozen here.

The stage map below is a literal copy of `leads.funnel.FUNNEL_STAGES` (migrations never import app
code); `portal/tests/test_tenant_stats_view.py` proves the two agree, status by status. Changing
the view (or the stage map) means a new migration that drops and recreates it.

Created WITH NO DATA: the first fill is a plain REFRESH (the concurrent form needs a populated view),
done by `portal.stats_view.tenant_stats_refresh()`, which detects it. The unique index on
(tenant_id, day) is what `REFRESH ... CONCURRENTLY` needs; neither column is ever NULL.
"""

import django.db.models.deletion
from django.db import migrations, models

CREATE_VIEW_SQL = r"""
CREATE MATERIALIZED VIEW tenant_stats_materialized AS
WITH tenant_zone AS (
    -- Each tenant's zone, once. A name PostgreSQL does not know falls back to UTC, so one bad
    -- value cannot fail the refresh for every tenant (readers apply the same fallback).
    SELECT t.id AS tenant_id, coalesce(z.name, 'UTC') AS tz
    FROM tenants t
    LEFT JOIN pg_timezone_names z ON z.name = t.timezone
),
lead_status_day AS (
    -- The single pass over lead_offers: group by (tenant, local day, status); the per-row cost
    -- is the AT TIME ZONE conversion. The pivot below then works on this much smaller set.
    SELECT lo.tenant_id,
           (lo.created_at AT TIME ZONE z.tz)::date AS day,
           lo.status,
           count(*) AS n
    FROM lead_offers lo
    JOIN tenant_zone z ON z.tenant_id = lo.tenant_id
    GROUP BY 1, 2, 3
),
lead_day AS (
    SELECT tenant_id,
           day,
           sum(n) AS leads_total,
           -- Funnel stages (leads/funnel.py FUNNEL_STAGES), by current status.
           sum(n) FILTER (WHERE status IN ('PENDING_MAPPING', 'TO_BE_CONTACTED')) AS stage_received,
           sum(n) FILTER (WHERE status IN ('CONTACTED', 'ENGAGED', 'QUALIFYING', 'HUMAN_HANDOFF'))
               AS stage_in_chat,
           sum(n) FILTER (WHERE status IN ('SCORED', 'LEAD_READY')) AS stage_qualified,
           sum(n) FILTER (WHERE status IN ('SENT_TO_DEVELOPER')) AS stage_delivered,
           sum(n) FILTER (WHERE status IN ('DISQUALIFIED', 'STOPPED', 'COOLING', 'REACTIVATION'))
               AS stage_not_qualified,
           -- One column per status.
           sum(n) FILTER (WHERE status = 'PENDING_MAPPING') AS status_pending_mapping,
           sum(n) FILTER (WHERE status = 'TO_BE_CONTACTED') AS status_to_be_contacted,
           sum(n) FILTER (WHERE status = 'CONTACTED') AS status_contacted,
           sum(n) FILTER (WHERE status = 'ENGAGED') AS status_engaged,
           sum(n) FILTER (WHERE status = 'QUALIFYING') AS status_qualifying,
           sum(n) FILTER (WHERE status = 'SCORED') AS status_scored,
           sum(n) FILTER (WHERE status = 'LEAD_READY') AS status_lead_ready,
           sum(n) FILTER (WHERE status = 'SENT_TO_DEVELOPER') AS status_sent_to_developer,
           sum(n) FILTER (WHERE status = 'COOLING') AS status_cooling,
           sum(n) FILTER (WHERE status = 'REACTIVATION') AS status_reactivation,
           sum(n) FILTER (WHERE status = 'DISQUALIFIED') AS status_disqualified,
           sum(n) FILTER (WHERE status = 'STOPPED') AS status_stopped,
           sum(n) FILTER (WHERE status = 'HUMAN_HANDOFF') AS status_human_handoff
    FROM lead_status_day
    GROUP BY 1, 2
),
delivery_day AS (
    -- Deliveries completed that day. A refunded delivery keeps its delivered_at and still counts
    -- (it was delivered); one refunded from DEAD_LETTER was never delivered and has none.
    SELECT d.tenant_id,
           (d.delivered_at AT TIME ZONE z.tz)::date AS day,
           count(*) AS deliveries_delivered,
           count(*) FILTER (WHERE d.status = 'PARTIAL') AS deliveries_partial,
           count(*) FILTER (WHERE d.status = 'REFUNDED') AS deliveries_refunded
    FROM deliveries d
    JOIN tenant_zone z ON z.tenant_id = d.tenant_id
    WHERE d.delivered_at IS NOT NULL
      AND d.status IN ('DELIVERED', 'PARTIAL', 'REFUNDED')
    GROUP BY 1, 2
),
credit_day AS (
    -- Credits moved that day, counted as tenant_credit_balances counts its totals: positive
    -- numbers of credits, except adjustments, which keep their sign.
    SELECT c.tenant_id,
           (c.created_at AT TIME ZONE z.tz)::date AS day,
           sum(c.amount) FILTER (WHERE c.transaction_type = 'CREDIT_PURCHASE') AS credits_purchased,
           -sum(c.amount) FILTER (WHERE c.transaction_type = 'CREDIT_CONSUMPTION') AS credits_consumed,
           sum(c.amount) FILTER (WHERE c.transaction_type = 'CREDIT_REFUND') AS credits_refunded,
           sum(c.amount) FILTER (WHERE c.transaction_type = 'CREDIT_BONUS') AS credits_bonus,
           sum(c.amount) FILTER (WHERE c.transaction_type = 'CREDIT_ADJUSTMENT') AS credits_adjusted
    FROM credit_ledger c
    JOIN tenant_zone z ON z.tenant_id = c.tenant_id
    GROUP BY 1, 2
)
SELECT tenant_id,
       day,
       coalesce(l.leads_total, 0)::integer AS leads_total,
       coalesce(l.stage_received, 0)::integer AS stage_received,
       coalesce(l.stage_in_chat, 0)::integer AS stage_in_chat,
       coalesce(l.stage_qualified, 0)::integer AS stage_qualified,
       coalesce(l.stage_delivered, 0)::integer AS stage_delivered,
       coalesce(l.stage_not_qualified, 0)::integer AS stage_not_qualified,
       coalesce(l.status_pending_mapping, 0)::integer AS status_pending_mapping,
       coalesce(l.status_to_be_contacted, 0)::integer AS status_to_be_contacted,
       coalesce(l.status_contacted, 0)::integer AS status_contacted,
       coalesce(l.status_engaged, 0)::integer AS status_engaged,
       coalesce(l.status_qualifying, 0)::integer AS status_qualifying,
       coalesce(l.status_scored, 0)::integer AS status_scored,
       coalesce(l.status_lead_ready, 0)::integer AS status_lead_ready,
       coalesce(l.status_sent_to_developer, 0)::integer AS status_sent_to_developer,
       coalesce(l.status_cooling, 0)::integer AS status_cooling,
       coalesce(l.status_reactivation, 0)::integer AS status_reactivation,
       coalesce(l.status_disqualified, 0)::integer AS status_disqualified,
       coalesce(l.status_stopped, 0)::integer AS status_stopped,
       coalesce(l.status_human_handoff, 0)::integer AS status_human_handoff,
       coalesce(d.deliveries_delivered, 0)::integer AS deliveries_delivered,
       coalesce(d.deliveries_partial, 0)::integer AS deliveries_partial,
       coalesce(d.deliveries_refunded, 0)::integer AS deliveries_refunded,
       coalesce(c.credits_purchased, 0)::bigint AS credits_purchased,
       coalesce(c.credits_consumed, 0)::bigint AS credits_consumed,
       coalesce(c.credits_refunded, 0)::bigint AS credits_refunded,
       coalesce(c.credits_bonus, 0)::bigint AS credits_bonus,
       coalesce(c.credits_adjusted, 0)::bigint AS credits_adjusted
FROM lead_day l
FULL JOIN delivery_day d USING (tenant_id, day)
FULL JOIN credit_day c USING (tenant_id, day)
WITH NO DATA;

COMMENT ON MATERIALIZED VIEW tenant_stats_materialized IS
    'One row per tenant and local day; refreshed by portal.stats_view.tenant_stats_refresh(). See docs/database.md.';

-- Required by REFRESH ... CONCURRENTLY, and the key of every per-tenant read.
CREATE UNIQUE INDEX idx_tenant_stats_materialized_tenant_day ON tenant_stats_materialized (tenant_id, day);
-- The all-tenants trend: a day range across every tenant.
CREATE INDEX idx_tenant_stats_materialized_day ON tenant_stats_materialized (day);
"""

# Dropping the view drops its indexes.
DROP_VIEW_SQL = "DROP MATERIALIZED VIEW IF EXISTS tenant_stats_materialized;"


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("converzia", "0001_initial"),
        ("leads", "0001_initial"),
        ("deliveries", "0001_initial"),
        ("billing", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="StatsViewRefresh",
            fields=[
                ("view_name", models.CharField(max_length=63, primary_key=True, serialize=False)),
                (
                    "refreshed_at",
                    models.DateTimeField(help_text="When the refresh's snapshot of the data was taken."),
                ),
                ("duration_ms", models.PositiveIntegerField()),
                ("row_count", models.PositiveBigIntegerField()),
                ("concurrently", models.BooleanField()),
            ],
            options={
                "db_table": "stats_view_refreshes",
            },
        ),
        # State only (managed=False): the read model over the view created below.
        migrations.CreateModel(
            name="TenantDailyStats",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "tenant_id", "day", blank=True, editable=False, primary_key=True, serialize=False
                    ),
                ),
                (
                    "tenant",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="converzia.tenant",
                    ),
                ),
                ("day", models.DateField(help_text="The tenant's local calendar day.")),
                ("leads_total", models.IntegerField()),
                ("stage_received", models.IntegerField()),
                ("stage_in_chat", models.IntegerField()),
                ("stage_qualified", models.IntegerField()),
                ("stage_delivered", models.IntegerField()),
                ("stage_not_qualified", models.IntegerField()),
                ("status_pending_mapping", models.IntegerField()),
                ("status_to_be_contacted", models.IntegerField()),
                ("status_contacted", models.IntegerField()),
                ("status_engaged", models.IntegerField()),
                ("status_qualifying", models.IntegerField()),
                ("status_scored", models.IntegerField()),
                ("status_lead_ready", models.IntegerField()),
                ("status_sent_to_developer", models.IntegerField()),
                ("status_cooling", models.IntegerField()),
                ("status_reactivation", models.IntegerField()),
                ("status_disqualified", models.IntegerField()),
                ("status_stopped", models.IntegerField()),
                ("status_human_handoff", models.IntegerField()),
                ("deliveries_delivered", models.IntegerField()),
                ("deliveries_partial", models.IntegerField(help_text="Of deliveries_delivered: now PARTIAL.")),
                (
                    "deliveries_refunded",
                    models.IntegerField(help_text="Of deliveries_delivered: refunded since."),
                ),
                ("credits_purchased", models.BigIntegerField()),
                ("credits_consumed", models.BigIntegerField()),
                ("credits_refunded", models.BigIntegerField()),
                ("credits_bonus", models.BigIntegerField()),
                ("credits_adjusted", models.BigIntegerField()),
            ],
            options={
                "verbose_name": "tenant daily stats",
                "verbose_name_plural": "tenant daily stats",
                "db_table": "tenant_stats_materialized",
                "managed": False,
            },
        ),
        migrations.RunSQL(CREATE_VIEW_SQL, reverse_sql=DROP_VIEW_SQL),
    ]
