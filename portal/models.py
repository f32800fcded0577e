"""Read models over the `tenant_stats_materialized` view, and the record of its refreshes.

The view itself is raw SQL: created by `portal/migrations/0001_tenant_stats_materialized.py`, defined
as it is now by `0002_tenant_stats_bounded_history.py`; `docs/database.md` describes its columns.
Read it through `portal.stats_view`, never by hand.
"""

from __future__ import annotations

from django.db import models

from converzia.models import Tenant
from converzia.tenancy import TenantScopedQuerySet


class TenantDailyStats(models.Model):
    """One row per tenant and LOCAL day (the tenant's time zone): leads created that day with the
    funnel stage and status they are in now, deliveries completed that day, credits moved that day.

    Read-only: rows change only through `portal.stats_view.tenant_stats_refresh()`. A tenant's day
    with no activity has no row; readers zero-fill.
    """

    # The view's unique index on (tenant_id, day) is its key; a composite primary key says so without
    # a synthetic id column in the view. (Django's admin does not support composite keys: read the
    # view through `portal.stats_view`, not the admin.)
    pk = models.CompositePrimaryKey("tenant_id", "day")
    # No reverse accessor on Tenant: nothing outside `portal` may depend on this view.
    tenant = models.ForeignKey(Tenant, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    day = models.DateField(help_text="The tenant's local calendar day.")

    # lead_offers created that day, by the funnel stage of their CURRENT status (leads/funnel.py).
    leads_total = models.IntegerField()
    stage_received = models.IntegerField()
    stage_in_chat = models.IntegerField()
    stage_qualified = models.IntegerField()
    stage_delivered = models.IntegerField()
    stage_not_qualified = models.IntegerField()

    # The same lead_offers by CURRENT status, one column per LeadOfferStatus.
    status_pending_mapping = models.IntegerField()
    status_to_be_contacted = models.IntegerField()
    status_contacted = models.IntegerField()
    status_engaged = models.IntegerField()
    status_qualifying = models.IntegerField()
    status_scored = models.IntegerField()
    status_lead_ready = models.IntegerField()
    status_sent_to_developer = models.IntegerField()
    status_cooling = models.IntegerField()
    status_reactivation = models.IntegerField()
    status_disqualified = models.IntegerField()
    status_stopped = models.IntegerField()
    status_human_handoff = models.IntegerField()

    # Deliveries completed that day (by delivered_at): DELIVERED, PARTIAL or REFUNDED after delivery.
    deliveries_delivered = models.IntegerField()
    deliveries_partial = models.IntegerField(help_text="Of deliveries_delivered: now PARTIAL.")
    deliveries_refunded = models.IntegerField(help_text="Of deliveries_delivered: refunded since.")

    # Credits moved that day (credit_ledger.created_at), as TenantCreditBalance counts them:
    # positive amounts, except adjustments, which keep their sign.
    credits_purchased = models.BigIntegerField()
    credits_consumed = models.BigIntegerField()
    credits_refunded = models.BigIntegerField()
    credits_bonus = models.BigIntegerField()
    credits_adjusted = models.BigIntegerField()

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = "tenant_stats_materialized"
        verbose_name = "tenant daily stats"
        verbose_name_plural = "tenant daily stats"

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.day}"


class StatsViewRefresh(models.Model):
    """The last successful refresh of each materialized view: the `as_of` its readers report.

    Kept out of the view on purpose: a `now()` column would change every row on every refresh, so a
    concurrent refresh would rewrite the whole view instead of only the rows whose numbers changed.
    Written in the same transaction as the refresh, so it never disagrees with the view's contents.
    """

    view_name = models.CharField(max_length=63, primary_key=True)
    refreshed_at = models.DateTimeField(help_text="When the refresh's snapshot of the data was taken.")
    duration_ms = models.PositiveIntegerField()
    row_count = models.PositiveBigIntegerField()
    concurrently = models.BooleanField()

    class Meta:
        db_table = "stats_view_refreshes"

    def __str__(self) -> str:
        return f"{self.view_name} @ {self.refreshed_at:%Y-%m-%d %H:%M:%S}"
