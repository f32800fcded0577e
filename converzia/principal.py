"""The cached principal: who a bearer token is and which tenants they may act for, kept in Redis.

A bearer request used to cost two queries before the view ran: the token joined to its user, then
the caller's membership joined to its tenant. Both answers change rarely, so they are cached per token
(`converzia.cache.principal_token_key`, keyed by the token's digest) and trusted only while:

- the entry's version equals the user's current principal version (`principal_version_key`), which
  is replaced on any change to the user, any of their tokens, memberships, or their tenants (the
  receivers and bulk-write hooks below, and `api_token_revoke`); and
- it was loaded less than `TTL_PRINCIPAL` seconds ago (the bound if an invalidation is ever missed).

The version is read before the database, and an entry is stored under that version: a change that
commits in between bumps the version again after commit, so the entry is never trusted. A token whose
entry is gone (first use, eviction) costs one lookup of its user id first, so that the version can
be read before the rows it guards.

Each process also keeps the entries it has seen (`_entries`, a bounded LRU keyed by the token digest):
a warm request then reads only the user's version from Redis, one round trip instead of two, and
unpickles nothing. The version stays the only thing trusted, so an invalidation reaches every process
on its next request exactly as before.

What is cached holds no secret: the token's digest, expiry and revocation state, the user's id and
flags (`is_active`, `is_staff`, `is_superuser`; other fields, the password hash among them, are
deferred and load on access), and the user's ACTIVE memberships with their tenant rows.

Redis unavailable (the breaker in converzia.cache) means the database answers, as before.
Session authentication does not use this.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.utils import timezone

from converzia import cache as principal_cache
from converzia.cache import TTL_PRINCIPAL, invalidate_principals
from converzia.errors import Unauthenticated
from converzia.models import ApiToken, Tenant, TenantMember, User

# Entries a process keeps (an entry is a few hundred bytes; a process sees the tokens of its callers).
LOCAL_ENTRIES_MAX = 4096

# Users with more memberships than this resolve their tenant from the database each time (a staff
# account added to many tenants), so an entry stays small.
MAX_CACHED_MEMBERSHIPS = 20

USER_FIELDS = ("id", "is_active", "is_staff", "is_superuser")
TOKEN_FIELDS = ("id", "user_id", "name", "key_prefix", "key_digest", "created_at", "last_used_at",
                "expires_at", "revoked_at")  # fmt: skip


def _ordered(model: type[Any], names: tuple[str, ...] | None) -> list[str]:
    """Field attnames in the model's concrete order (what `Model.from_db` expects)."""
    return [f.attname for f in model._meta.concrete_fields if names is None or f.attname in names]


def _row(instance: Any, names: list[str]) -> dict[str, Any]:
    return {name: getattr(instance, name) for name in names}


def _instance(model: type[Any], row: dict[str, Any]) -> Any:
    names = [name for name in _ordered(model, None) if name in row]
    return model.from_db(DEFAULT_DB_ALIAS, names, [row[name] for name in names])


@dataclass(frozen=True)
class CachedMembership:
    tenant: Tenant
    role: str


@dataclass
class Principal:
    """A bearer request's user and token, and the means to its memberships (cached or not)."""

    token_digest: str
    token: ApiToken
    user: User
    # The version the data was read under; None: do not store anything more for this request.
    version: str | None
    entry: dict[str, Any] = field(default_factory=dict)

    def active_memberships(self) -> list[CachedMembership] | None:
        """The user's ACTIVE memberships, from the entry or loaded once and stored; None when there
        are too many to cache (the caller then queries the one it needs)."""
        rows = self.entry.get("memberships")
        if rows is None and "memberships" not in self.entry:
            rows = _load_memberships(self.user.pk)
            self.entry["memberships"] = rows
            self._store()
            principal_cache.principal_counted("miss")
        if rows is None:
            return None
        return [CachedMembership(tenant=_instance(Tenant, row["tenant"]), role=row["role"]) for row in rows]

    def _store(self) -> None:
        if self.version is not None:
            _entries.put(self.token_digest, self.entry)
            principal_cache.principal_entry_set(self.token_digest, self.entry)


class _LocalEntries:
    """The entries this process has read or stored, most recently used last (thread-safe: threaded
    workers share it)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                self._entries.move_to_end(digest)
            return entry

    def put(self, digest: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_entries = _LocalEntries(LOCAL_ENTRIES_MAX)


def _redis_entry_get(digest: str) -> dict[str, Any] | None:
    """The token's entry in Redis, kept in this process for the next request."""
    entry = principal_cache.principal_entry_get(digest)
    if entry is not None:
        _entries.put(digest, entry)
    return entry


def _trusted(entry: dict[str, Any] | None, version: str | None, now: dt.datetime) -> bool:
    return (
        entry is not None
        and version is not None
        and entry.get("version") == version
        and entry.get("loaded_at") is not None
        and now - entry["loaded_at"] < dt.timedelta(seconds=TTL_PRINCIPAL)
    )


def _load_memberships(user_id: uuid.UUID) -> list[dict[str, Any]] | None:
    found = list(
        TenantMember.objects.active()
        .filter(user_id=user_id)
        .select_related("tenant")
        .order_by("tenant_id")[: MAX_CACHED_MEMBERSHIPS + 1]
    )
    if len(found) > MAX_CACHED_MEMBERSHIPS:
        return None
    tenant_fields = _ordered(Tenant, None)
    return [{"role": m.role, "tenant": _row(m.tenant, tenant_fields)} for m in found]


def _usable(token: ApiToken, user_is_active: bool, now: dt.datetime) -> None:
    if token.revoked_at is not None:
        raise Unauthenticated("This token has been revoked.")
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthenticated("This token has expired.")
    if not user_is_active:
        raise Unauthenticated("This user account is disabled.")


def principal_authenticate(*, raw_token: str) -> Principal:
    """The usable token behind `raw_token` and its user; `Unauthenticated` otherwise.

    Warm: one Redis read (the user's version; the entry is this process's copy), no query. Cold: the
    entry from Redis, or the token joined to its user (one SELECT), and at most one UPDATE per token
    per minute to record its use, as `api_token_authenticate`.
    """
    from converzia.services import api_token_authenticate, api_token_touch

    digest = ApiToken.digest(raw_token)
    now = timezone.now()
    if not principal_cache.principal_cache_available():
        # Redis is away (the breaker is open): the database alone, exactly as before the cache.
        token = api_token_authenticate(raw_token=raw_token, digest=digest, now=now)
        return Principal(token_digest=digest, token=token, user=token.user, version=None)
    entry = _entries.get(digest)
    entry_is_local = entry is not None
    if entry is None:
        entry = _redis_entry_get(digest)
    user_id = entry.get("user_id") if entry else None
    if user_id is None:
        # The token's user must be known before the version is read, and the version read before
        # the rows it will guard; a token never seen (or evicted) costs this one lookup more.
        user_id = ApiToken.objects.filter(key_digest=digest).values_list("user_id", flat=True).first()
        if user_id is None:
            raise Unauthenticated("Invalid token.")
    version = principal_cache.principal_version(user_id, mint=True)
    if entry_is_local and version is not None and not _trusted(entry, version, now):
        # This process's copy is stale; another process may already have stored the current one.
        entry = _redis_entry_get(digest) or entry
    if entry is not None and _trusted(entry, version, now):
        user = _instance(User, entry["user"])
        token = _instance(ApiToken, entry["token"])
        token.user = user
        _usable(token, user.is_active, now)
        principal = Principal(token_digest=digest, token=token, user=user, version=version, entry=entry)
        if api_token_touch(token=token, now=now):
            # Keep the throttle: the next requests must see this stamp, not the cached one.
            entry["token"]["last_used_at"] = token.last_used_at
            principal._store()
        principal_cache.principal_counted("hit")
        return principal

    token = api_token_authenticate(raw_token=raw_token, digest=digest, now=now)
    user = token.user
    if version is None or str(user.pk) != str(user_id):
        # Redis failed half-way, or the token changed hands since its user was looked up: store
        # nothing (a later request starts over).
        return Principal(token_digest=digest, token=token, user=user, version=None)
    # Only the fields the API reads are cached; the rest are deferred on a warm request (and the
    # password hash never leaves the database). This request keeps the full row it has.
    entry = {
        "user_id": str(user.pk),
        "version": version,
        "loaded_at": now,
        "user": _row(user, _ordered(User, USER_FIELDS)),
        "token": _row(token, _ordered(ApiToken, TOKEN_FIELDS)),
    }
    principal = Principal(token_digest=digest, token=token, user=user, version=version, entry=entry)
    principal._store()
    principal_cache.principal_counted("miss")
    return principal


# --- invalidation --------------------------------------------------------------------------------
# save() and delete() (cascades included: with receivers connected, Django deletes row by row) go
# through these receivers; bulk `update()` / `bulk_create()` through the querysets in converzia.models.


def tenant_member_user_ids(tenant_ids: Any) -> list[uuid.UUID]:
    """Every user with a membership (any status) in one of `tenant_ids`."""
    return list(
        TenantMember.objects.filter(tenant_id__in=list(tenant_ids))
        .values_list("user_id", flat=True)
        .distinct()
    )


@receiver(post_save, sender=User, dispatch_uid="principal_user_saved")
@receiver(post_delete, sender=User, dispatch_uid="principal_user_deleted")
def _user_changed(sender: type[User], instance: User, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # a session login stamp changes nothing a principal holds
    invalidate_principals([instance.pk])


@receiver(post_save, sender=ApiToken, dispatch_uid="principal_token_saved")
@receiver(post_delete, sender=ApiToken, dispatch_uid="principal_token_deleted")
def _token_changed(sender: type[ApiToken], instance: ApiToken, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    if kwargs.get("created") or (update_fields is not None and set(update_fields) <= {"last_used_at"}):
        return  # a new token has nothing cached yet; its use stamp changes nothing cached
    invalidate_principals([instance.user_id])


@receiver(pre_save, sender=TenantMember, dispatch_uid="principal_member_moving")
def _member_moving(sender: type[TenantMember], instance: TenantMember, **kwargs: Any) -> None:
    # A membership handed to another user (the admin allows editing `user`) must also invalidate the
    # user who loses it; only then is the old owner worth a query.
    update_fields = kwargs.get("update_fields")
    if instance._state.adding or (update_fields is not None and "user" not in update_fields):
        return
    previous = TenantMember.objects.filter(pk=instance.pk).values_list("user_id", flat=True).first()
    if previous is not None and previous != instance.user_id:
        invalidate_principals([previous])


@receiver(post_save, sender=TenantMember, dispatch_uid="principal_member_saved")
@receiver(post_delete, sender=TenantMember, dispatch_uid="principal_member_deleted")
def _member_changed(sender: type[TenantMember], instance: TenantMember, **kwargs: Any) -> None:
    invalidate_principals([instance.user_id])


@receiver(post_save, sender=Tenant, dispatch_uid="principal_tenant_saved")
@receiver(post_delete, sender=Tenant, dispatch_uid="principal_tenant_deleted")
def _tenant_changed(sender: type[Tenant], instance: Tenant, **kwargs: Any) -> None:
    # Cached memberships carry the tenant row (status, time zone, settings): every member's goes.
    invalidate_principals(tenant_member_user_ids([instance.pk]))
