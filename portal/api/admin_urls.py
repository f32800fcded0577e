"""Staff read routes, mounted at /api/admin/."""

from __future__ import annotations

from django.urls import path

from portal.api.admin import AdminQueueView, AdminRevenueView, AdminStatsView

urlpatterns = [
    path("queue", AdminQueueView.as_view(), name="admin-queue"),
    path("revenue", AdminRevenueView.as_view(), name="admin-revenue"),
    path("stats", AdminStatsView.as_view(), name="admin-stats"),
]
