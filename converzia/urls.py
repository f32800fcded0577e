"""Root URLs. API routes live under /api/; anything else under /api/ answers the JSON 404.

Each area mounts its own URL module here (the root URLconf is the one place allowed to name them all):
- /api/            kernel: auth/token, health/live, schema/, docs/ (converzia.api.urls)
- /api/portal/     tenant endpoints (portal.api.urls)
- /api/webhooks/   Meta lead notifications (leads.api.urls)
- /api/ops/        staff operations on lead_offers (deliveries.api.urls)
- /api/admin/      staff reads: the queue (portal.api.admin_urls)
- /admin/database/ staff: dbhealth checks and slow queries (converzia.admin_database)
- /metrics         Prometheus exposition, staff or allow-listed addresses (converzia.observability)
- /                the index page (the admin's "View site"), /favicon.ico (converzia.views)
Later: the other /api/admin/ reads.
"""

from django.apps import apps
from django.contrib import admin
from django.urls import include, path, re_path

from converzia.admin_database import admin_database
from converzia.observability.views import MetricsView
from converzia.views import api_not_found, favicon, home

urlpatterns = [
    path("", home, name="home"),
    path("favicon.ico", favicon, name="favicon"),
    path("admin/database/", admin_database, name="admin_database"),
    path("admin/", admin.site.urls),
    path("metrics", MetricsView.as_view(), name="metrics"),
    path("api/", include("converzia.api.urls")),
    path("api/portal/", include("portal.api.urls")),
    path("api/admin/", include("portal.api.admin_urls")),
    path("api/webhooks/", include("leads.api.urls")),
    path("api/ops/", include("deliveries.api.urls")),
    # Must stay last: unknown /api/ paths get the JSON error shape even with DEBUG on, and never an
    # APPEND_SLASH redirect (a redirected POST loses its body).
    re_path(r"^api/", api_not_found),
]

# Development only: settings/local.py installs the toolbar when DEBUG is on and the package is present.
if apps.is_installed("debug_toolbar"):
    urlpatterns.insert(0, path("__debug__/", include("debug_toolbar.urls")))

handler400 = "converzia.views.bad_request"
handler403 = "converzia.views.permission_denied"
handler404 = "converzia.views.page_not_found"
handler500 = "converzia.views.server_error"
