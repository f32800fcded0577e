"""Redefine `tenant_stats_materialized` (0001's first version) so a refresh fits its budget.

Same columns, same meaning; what changes (measured at 2M lead_offers on 2 cores, docs/database.md):
  - It keeps the last 120 local days (every day from today's UTC date minus 120 on; `VIEW_HISTORY_DAYS`
    in `portal.stats_view`). The rows (tenants x days) are what REFRESH ... CONCURRENTLY sorts and
    compares: 110k rows for 18 months of history took 10-12 s, 25k rows take ~4 s. Every reader's
    window (30-day trends) fits in it; the exact cut keeps only complete days.
  - lead_offers are counted in one aggregation by (tenant, day) with one `count(*) FILTER` per status,
    and the stages are sums of the status columns (0001 grouped by status first, then pivoted).
  - The zone fallback is a small function run once per tenant (`tenant_stats_zone`), not a join to
    `pg_timezone_names`, which cost up to seconds per refresh and misled the planner.
  - Rows are stored in day order, so an all-tenants day range reads adjacent pages.

Built, as before, from three separately pre-aggregated sets joined on (tenant_id, day), never by
joining the child tables to each other (v1's cartesian fan-out, DOMAIN.md §10.8):
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

import importlib

from django.db import migrations

INITIAL = importlib.import_module("portal.migrations.0001_tenant_stats_materialized")

CREATE_SQL = r"""
-- The view of 0001 goes; readers see an unpopulated view until the next refresh (plain, detected).
DROP MATERIALIZED VIEW tenant_stats_materialized;
DELETE FROM stats_view_refreshes WHERE view_name = 'tenant_stats_materialized';

-- A tenant's zone as PostgreSQL can use it: an unknown name (a typo saved in the admin) falls back
-- to UTC instead of failing the refresh for every tenant. portal.stats_view.tenant_zone() does the
-- same for readers. Called once per tenant per refresh, never per row.
CREATE OR REPLACE FUNCTION tenant_stats_zone(zone text) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED AS $$
BEGIN
    PERFORM now() AT TIME ZONE zone;
    RETURN zone;
EXCEPTION WHEN data_exception THEN  -- "time zone ... not recognized" is 22023
    RETURN 'UTC';
END
$$;

CREATE MATERIALIZED VIEW tenant_stats_materialized AS
WITH tenant_zone AS MATERIALIZED (
    SELECT t.id AS tenant_id, coalesce(tenant_stats_zone(t.timezone), 'UTC') AS tz
    FROM tenants t
),
lead_day AS (
    -- The one pass over lead_offers. Its cost is mostly the per-row AT TIME ZONE; the zone join is
    -- a 200-row hash and each count(*) FILTER a cheap comparison. The created_at bound is a cheap
    -- pre-filter (a day and more wider than the kept history); the exact cut is the last WHERE.
    SELECT lo.tenant_id,
           (lo.created_at AT TIME ZONE z.tz)::date AS day,
           count(*) AS leads_total,
           count(*) FILTER (WHERE lo.status = 'PENDING_MAPPING') AS status_pending_mapping,
           count(*) FILTER (WHERE lo.status = 'TO_BE_CONTACTED') AS status_to_be_contacted,
           count(*) FILTER (WHERE lo.status = 'CONTACTED') AS status_contacted,
           count(*) FILTER (WHERE lo.status = 'ENGAGED') AS status_engaged,
           count(*) FILTER (WHERE lo.status = 'QUALIFYING') AS status_qualifying,
           count(*) FILTER (WHERE lo.status = 'SCORED') AS status_scored,
           count(*) FILTER (WHERE lo.status = 'LEAD_READY') AS status_lead_ready,
           count(*) FILTER (WHERE lo.status = 'SENT_TO_DEVELOPER') AS status_sent_to_developer,
           count(*) FILTER (WHERE lo.status = 'COOLING') AS status_cooling,
           count(*) FILTER (WHERE lo.status = 'REACTIVATION') AS status_reactivation,
           count(*) FILTER (WHERE lo.status = 'DISQUALIFIED') AS status_disqualified,
           count(*) FILTER (WHERE lo.status = 'STOPPED') AS status_stopped,
           count(*) FILTER (WHERE lo.status = 'HUMAN_HANDOFF') AS status_human_handoff
    FROM lead_offers lo
    JOIN tenant_zone z ON z.tenant_id = lo.tenant_id
    WHERE lo.created_at >= now() - interval '122 days'
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
    WHERE d.delivered_at >= now() - interval '122 days'
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
    WHERE c.created_at >= now() - interval '122 days'
    GROUP BY 1, 2
)
SELECT tenant_id,
       day,
       coalesce(l.leads_total, 0)::integer AS leads_total,
       -- The funnel stages of leads.funnel.FUNNEL_STAGES, from the status counts. leads_total is
       -- count(*), not this sum, so a status missing here would show as sum(stages) != total.
       coalesce(l.status_pending_mapping + l.status_to_be_contacted, 0)::integer AS stage_received,
       coalesce(l.status_contacted + l.status_engaged + l.status_qualifying + l.status_human_handoff, 0)::integer
           AS stage_in_chat,
       coalesce(l.status_scored + l.status_lead_ready, 0)::integer AS stage_qualified,
       coalesce(l.status_sent_to_developer, 0)::integer AS stage_delivered,
       coalesce(l.status_disqualified + l.status_stopped + l.status_cooling + l.status_reactivation, 0)::integer
           AS stage_not_qualified,
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
-- The kept history: every local day from 120 days before today's UTC date on. Any day kept is
-- complete (the pre-filters above reach back further than its first instant in any zone).
WHERE day >= (now() AT TIME ZONE 'UTC')::date - 120
-- Stored day by day: an all-tenants window reads adjacent pages (a concurrent refresh appends the
-- rows it rewrites, and those are mostly the latest days anyway).
ORDER BY day, tenant_id
WITH NO DATA;

COMMENT ON MATERIALIZED VIEW tenant_stats_materialized IS
    'One row per tenant and local day; refreshed by portal.stats_view.tenant_stats_refresh(). See docs/database.md.';

-- Required by REFRESH ... CONCURRENTLY, and the key of every per-tenant read.
CREATE UNIQUE INDEX idx_tenant_stats_materialized_tenant_day ON tenant_stats_materialized (tenant_id, day);
-- The all-tenants trend: a day range across every tenant.
CREATE INDEX idx_tenant_stats_materialized_day ON tenant_stats_materialized (day);
"""

# Back to 0001's definition (its SQL, imported rather than copied: both files are frozen).
# Dropping a view drops its indexes.
REVERSE_SQL = (
    """
DROP MATERIALIZED VIEW IF EXISTS tenant_stats_materialized;
DROP FUNCTION IF EXISTS tenant_stats_zone(text);
DELETE FROM stats_view_refreshes WHERE view_name = 'tenant_stats_materialized';
"""
    + INITIAL.CREATE_VIEW_SQL
)


class Migration(migrations.Migration):
    dependencies = [("portal", "0001_tenant_stats_materialized")]

    operations = [migrations.RunSQL(CREATE_SQL, reverse_sql=REVERSE_SQL)]
