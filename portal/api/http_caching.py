"""HTTP caching of cacheable reads (API.md "Conventions", Caching): ETag, 304 and `?fresh=true`.

A cacheable read answers `Cache-Control: private, no-cache` (a browser may keep it but must
revalidate every time) with a strong ETag: a hash of the body without `cached`, because a hit and the
miss that stored it carry the same numbers and `as_of`. A matching `If-None-Match` gets 304 with no
body, so a polling dashboard costs one cache lookup and a few bytes, and never shows numbers older
than the server's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
from django.utils.cache import patch_vary_headers
from rest_framework.request import Request
from rest_framework.response import Response

from converzia.errors import Forbidden

CACHE_CONTROL = "private, no-cache"
# The body depends on who asks and for which tenant.
VARY = ("Authorization", "X-Tenant-ID")
FRESH_PARAM = "fresh"


def body_etag(body: Mapping[str, Any]) -> str:
    """A strong ETag over the body minus `cached` (canonical JSON: sorted keys).

    orjson rather than the standard library: the admin revenue body is ~400 KB, which `json.dumps`
    takes tens of milliseconds to canonicalize on every request.
    """
    payload = {key: value for key, value in body.items() if key != "cached"}
    canonical = orjson.dumps(payload, default=str, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return '"' + hashlib.sha256(canonical).hexdigest()[:32] + '"'


def etag_matches(request: Request, etag: str) -> bool:
    """RFC 9110 `If-None-Match`: `*`, or any listed tag equal under weak comparison."""
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == opaque for candidate in header.split(","))


def cached_response(request: Request, body: Mapping[str, Any]) -> Response:
    """200 with `body`, or 304 without it when the client already holds this ETag."""
    etag = body_etag(body)
    response = Response(status=304) if etag_matches(request, etag) else Response(body)
    response["ETag"] = etag
    response["Cache-Control"] = CACHE_CONTROL
    patch_vary_headers(response, VARY)
    return response


def fresh_allowed(fresh: bool, *, is_staff: bool) -> bool:
    """`?fresh=true` bypasses the server cache, for platform staff only.

    Anyone else gets 403 `forbidden` rather than a silently cached answer: a caller that asks for
    fresh numbers must not believe it got them. (Tenants get exact numbers anyway: every lead change
    invalidates the cache.)
    """
    if fresh and not is_staff:
        raise Forbidden(
            "Only platform staff may bypass the cache (fresh=true).",
            details={FRESH_PARAM: ["Staff only."]},
        )
    return fresh
