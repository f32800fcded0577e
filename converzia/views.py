"""Django-level views: the error handlers (JSON in the API's error shape under /api/, Django's defaults
elsewhere), and the site root: the index page at `/` and `/favicon.ico`."""

from __future__ import annotations

import functools
from pathlib import Path

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults
from django.views.decorators.cache import cache_control
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from converzia.api.exception_handler import INTERNAL_ERROR_MESSAGE, NOT_FOUND_MESSAGE, error_body
from converzia.errors import ErrorCode

API_PREFIX = "/api/"


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PREFIX)


# CSRF-exempt: an unknown API path must answer 404 to a POST too, not a CSRF failure page.
@csrf_exempt
def api_not_found(request: HttpRequest) -> HttpResponse:
    """The catch-all for /api/ paths that match no route, whatever the method."""
    return JsonResponse(error_body(ErrorCode.NOT_FOUND, NOT_FOUND_MESSAGE), status=404)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """`handler400`: e.g. a disallowed Host header or a suspicious operation under /api/."""
    if _is_api(request):
        return JsonResponse(error_body(ErrorCode.INVALID_INPUT, "Bad request."), status=400)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """`handler403`: Django's PermissionDenied raised by a non-DRF view under /api/."""
    if _is_api(request):
        return JsonResponse(
            error_body(ErrorCode.FORBIDDEN, "You do not have permission to do this."), status=403
        )
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """`handler404`: a non-DRF view under /api/ raised Http404."""
    if _is_api(request):
        return JsonResponse(error_body(ErrorCode.NOT_FOUND, NOT_FOUND_MESSAGE), status=404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """`handler500`: an exception escaped a view (Django has already logged it with its traceback)."""
    if _is_api(request):
        return JsonResponse(error_body(ErrorCode.INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE), status=500)
    return defaults.server_error(request)


# --- The site root ---------------------------------------------------------------------------------

FAVICON_PATH = Path(__file__).resolve().parent / "static" / "converzia" / "favicon.ico"
# Its URL has no content hash, so browsers and proxies may keep it only so long: a week.
FAVICON_MAX_AGE_S = 7 * 24 * 3600


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """`/`: what runs here and where to go (the admin's "View site" links to it).

    Static text: no database, no session or user, no `{% static %}` (production's manifest storage
    needs `collectstatic`), so it answers the same under every settings module, DEBUG or not.
    """
    return render(request, "converzia/home.html")


@functools.cache
def _favicon_bytes() -> bytes:
    return FAVICON_PATH.read_bytes()


@require_safe
@cache_control(public=True, max_age=FAVICON_MAX_AGE_S)
def favicon(request: HttpRequest) -> HttpResponse:
    """`/favicon.ico`, which browsers ask for on every page: served from memory rather than redirected,
    so it needs neither `collectstatic` nor a second round trip."""
    return HttpResponse(_favicon_bytes(), content_type="image/x-icon")
