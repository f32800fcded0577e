"""The admin's "Database" page: `dbhealth`'s checks and `slow_queries`' top statements, for staff.

Mounted at /admin/database/ by the root URLconf (ahead of the admin's own URLs) and wrapped in
`admin.site.admin_view`, so it needs an active staff login (anyone else is sent to the admin login) and
is CSRF-protected. Every staff member may read it: it shows catalog statistics and normalised query
texts (constants replaced by $1, $2…), nothing a staff member cannot already see in the admin. Resetting
this database's pg_stat_statements counters (a POST) is for superusers only: it erases everyone's
history.

Importing this module also points the admin index at `admin/converzia/index.html`, which adds the link.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from converzia.db.health import Status, run_checks, worst_status
from converzia.db.stat_statements import StatStatementsUnavailable, slow_queries, stat_statements_reset
from converzia.errors import QueryTimeout

SLOW_QUERY_LIMIT = 20

admin.site.index_template = "admin/converzia/index.html"


@require_http_methods(["GET", "POST"])
def database_view(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _reset(request)
    order = request.GET.get("order", "total")
    if order not in ("total", "mean", "calls"):
        order = "total"
    results = run_checks()
    report, unavailable = None, None
    try:
        report = slow_queries(order=order, limit=SLOW_QUERY_LIMIT)  # type: ignore[arg-type]
    except StatStatementsUnavailable as exc:
        unavailable = str(exc)
    except QueryTimeout:
        unavailable = "Reading pg_stat_statements timed out; try again."
    context = {
        **admin.site.each_context(request),
        "title": "Database",
        "results": results,
        "worst": worst_status(results),
        "counts": {s.value: sum(1 for r in results if r.status is s) for s in Status},
        "report": report,
        "unavailable": unavailable,
        "order": order,
        "can_reset": request.user.is_superuser,
    }
    return TemplateResponse(request, "admin/converzia/database.html", context)


def _reset(request: HttpRequest) -> HttpResponse:
    if not request.user.is_superuser:
        raise PermissionDenied("Only superusers may reset pg_stat_statements.")
    try:
        scope = stat_statements_reset()
    except StatStatementsUnavailable as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"pg_stat_statements reset: statement counters of {scope} are zero.")
    return HttpResponseRedirect(reverse("admin_database"))


admin_database = admin.site.admin_view(database_view)
