"""Kernel writes: API token issue, revocation and bearer authentication."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

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
    """Revoke `token` (idempotent: a revoked token keeps its first revocation time)."""
    now = timezone.now()
    updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
    if updated:
        token.revoked_at = now
    else:
        token.refresh_from_db(fields=["revoked_at"])
    return token


def api_token_authenticate(*, raw_token: str) -> ApiToken:
    """The usable token behind `raw_token`, with its user loaded; `Unauthenticated` otherwise.

    One SELECT (token joined to its user); at most one UPDATE per token per minute to record use.
    """
    token = ApiToken.objects.select_related("user").filter(key_digest=ApiToken.digest(raw_token)).first()
    if token is None:
        raise Unauthenticated("Invalid token.")
    now = timezone.now()
    if token.revoked_at is not None:
        raise Unauthenticated("This token has been revoked.")
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthenticated("This token has expired.")
    if not token.user.is_active:
        raise Unauthenticated("This user account is disabled.")
    _api_token_touch(token=token, now=now)
    return token


def _api_token_touch(*, token: ApiToken, now: dt.datetime) -> None:
    stale_before = now - TOKEN_TOUCH_INTERVAL
    if token.last_used_at is not None and token.last_used_at >= stale_before:
        return
    # Conditional, so concurrent requests with the same token write once rather than queueing on the
    # row lock to write the same minute.
    ApiToken.objects.filter(pk=token.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale_before)
    ).update(last_used_at=now)
    token.last_used_at = now
