"""Staff admin for the portal's read models: when each materialized view was last refreshed.

`TenantDailyStats` (the `tenant_stats_materialized` rows) is not registered: its primary key is
composite, which Django's admin does not support; read it through `portal.stats_view`.
"""

from __future__ import annotations

from django.contrib import admin

from converzia.admin_tools import FastModelAdmin, ViewOnlyMixin
from portal.models import StatsViewRefresh


@admin.register(StatsViewRefresh)
class StatsViewRefreshAdmin(ViewOnlyMixin, FastModelAdmin):
    """Written by the refresh in the same transaction as the view; read-only here."""

    list_display = ("view_name", "refreshed_at", "duration_ms", "row_count", "concurrently")
    ordering = ("view_name",)
