"""Staff read routes, mounted at /api/admin/."""

from __future__ import annotations

from django.urls import path

from portal.api.admin import AdminQueueView

urlpatterns = [
    path("queue", AdminQueueView.as_view(), name="admin-queue"),
]
