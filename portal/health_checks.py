"""The `tenant_stats_materialized` age check for `manage.py dbhealth` and the admin's Database page.

Registered from `PortalConfig.ready()`: the kernel's check runner (`converzia.db.health`) imports nothing
from `portal`, so the check that needs `portal.stats_view` lives here and adds itself.
"""

from __future__ import annotations

from django.conf import settings

from converzia.db.health import CheckOptions, CheckResult, Status, register_check
from converzia.db.timeouts import guarded
from portal.stats_view import VIEW_NAME, stats_view_state

# Stale after this many missed refreshes; failing after a day (the dashboard's "today" is then wrong).
STALE_AFTER_REFRESHES = 3
FAIL_AFTER_S = 24 * 3600


@register_check("stats_view", "tenant_stats_materialized age")
def check_stats_view(options: CheckOptions) -> CheckResult:
    with guarded("dbhealth.stats_view", timeout_ms=5_000, using=options.using):
        state = stats_view_state()
    every = float(settings.STATS_REFRESH_EVERY_S)
    stale_after = max(every * STALE_AFTER_REFRESHES, 300.0)
    details = [
        {
            "view": VIEW_NAME,
            "populated": state.populated,
            "refreshed_at": state.refreshed_at.isoformat() if state.refreshed_at else None,
            "duration_ms": state.duration_ms,
            "row_count": state.row_count,
            "concurrently": state.concurrently,
        }
    ]
    age = state.age_seconds()
    if not state.populated or age is None:
        return CheckResult(
            "stats_view",
            Status.WARN,
            "never",
            f"{VIEW_NAME} has never been refreshed: run `manage.py refresh_stats` or start a worker "
            "(it refreshes on a schedule).",
            details,
        )
    if age > FAIL_AFTER_S:
        status = Status.FAIL
    elif age > stale_after:
        status = Status.WARN
    else:
        status = Status.OK
    message = f"Last refreshed {age:.0f} s ago (scheduled every {every:g} s), took {state.duration_ms} ms."
    if status is not Status.OK:
        message += " Is a worker running the maintenance queue?"
    return CheckResult("stats_view", status, f"{age:.0f} s", message, details)
