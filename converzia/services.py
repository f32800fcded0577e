"""Kernel writes: API token issue, revocation and bearer authentication."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from converzia.cache import invalidate_principals
from converzia.errors import Unauthenticated
from converzia.models import ApiToken, User

# `last_used_at` is informational ("is this token still in use?"): minute precision is plenty, and it
# keeps an authenticated request from turning into a write on every call.
TOKEN_TOUCH_INTERVAL = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedToken:
    """A freshly issued token. `raw` exists only here: the database keeps its digest."""

    token: ApiToken
    raw: str


def api_token_issue(
    *, user: User, name: str = "default", expires_at: dt.datetime | None = None
) -> IssuedToken:
    raw = ApiToken.generate()
    token = ApiToken(
        user=user,
        name=name,
        key_prefix=raw[:12],
        key_digest=ApiToken.digest(raw),
        expires_at=expires_at,
    )
    token.full_clean()
    with transaction.atomic():
        token.save()
    return IssuedToken(token=token, raw=raw)


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke `token` (idempotent: a revoked token keeps its first revocation time).

    Its cached principal is invalidated, so the very next request with it is refused.
    """
    now = timezone.now()
    updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
    if updated:
        token.revoked_at = now
    else:
        token.refresh_from_db(fields=["revoked_at"])
    invalidate_principals([token.user_id])
    return token


def api_token_authenticate(
    *, raw_token: str, digest: str | None = None, now: dt.datetime | None = None
) -> ApiToken:
    """The usable token behind `raw_token`, with its user loaded; `Unauthenticated` otherwise.

    One SELECT (token joined to its user); at most one UPDATE per token per minute to record use.
    This is the database path; requests go through `converzia.principal.principal_authenticate`,
    which answers from the cached principal when it can and comes here when it cannot.
    """
    digest = digest or ApiToken.digest(raw_token)
    token = ApiToken.objects.select_related("user").filter(key_digest=digest).first()
    if token is None:
        raise Unauthenticated("Invalid token.")
    now = now or timezone.now()
    if token.revoked_at is not None:
        raise Unauthenticated("This token has been revoked.")
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthenticated("This token has expired.")
    if not token.user.is_active:
        raise Unauthenticated("This user account is disabled.")
    api_token_touch(token=token, now=now)
    return token


def api_token_touch(*, token: ApiToken, now: dt.datetime) -> bool:
    """Record that `token` was used, at most once per `TOKEN_TOUCH_INTERVAL`; True when it wrote.

    Judged by `token.last_used_at` as the caller has it (the database row, or the cached principal,
    which is rewritten after a touch so the throttle holds either way).
    """
    stale_before = now - TOKEN_TOUCH_INTERVAL
    if token.last_used_at is not None and token.last_used_at >= stale_before:
        return False
    # Conditional, so concurrent requests with the same token write once rather than queueing on the
    # row lock to write the same minute.
    ApiToken.objects.filter(pk=token.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale_before)
    ).update(last_used_at=now)
    token.last_used_at = now
    return True
