"""Development-only helpers (converzia.settings.local)."""

from __future__ import annotations

from django.http import HttpRequest


def show_debug_toolbar(request: HttpRequest) -> bool:
    """The toolbar's own rule (DEBUG, a request from INTERNAL_IPS), for pages a browser asked for.

    API clients and the load tools (`make load`, `measure_*`) never ask for HTML, so they do not pay
    for the toolbar recording every SQL statement of their requests.
    """
    from debug_toolbar.middleware import show_toolbar

    return "text/html" in request.headers.get("Accept", "") and show_toolbar(request)
