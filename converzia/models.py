"""The kernel's data: users, tenants, memberships and API tokens."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from zoneinfo import available_timezones

from django.conf import settings as django_settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from converzia.cache import invalidate_principals
from converzia.tenancy import TenantScopedQuerySet

# Bound once: several models have a field called `settings`.
USER_MODEL = django_settings.AUTH_USER_MODEL


def validate_timezone(value: str) -> None:
    """Tenant windows ("today", "last 7 days") are computed in this zone; it must be an IANA name."""
    if value not in available_timezones():
        raise ValidationError(
            f"{value!r} is not an IANA time zone name (e.g. America/Argentina/Buenos_Aires)."
        )


def choices_check(field: str, choices: type[models.TextChoices], name: str) -> models.CheckConstraint:
    """A CHECK that keeps an enum column to its TextChoices values: a row with an unknown status would
    belong to no funnel stage and could never move."""
    return models.CheckConstraint(condition=models.Q(**{f"{field}__in": choices.values}), name=name)


class TimestampedModel(models.Model):
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class PrincipalWritesMixin:
    """For querysets of rows a cached principal holds (converzia.principal): bulk `update()` and
    `bulk_create()` send no save signals, so they invalidate the affected users' principals here.
    (`delete()` needs nothing: with receivers connected, Django deletes row by row with signals.)"""

    # Columns whose bulk update changes nothing a principal holds.
    principal_neutral_fields: frozenset[str] = frozenset()

    def principal_user_ids(self) -> list[uuid.UUID]:
        raise NotImplementedError

    def principal_user_ids_of(self, objs: list[models.Model]) -> list[uuid.UUID]:
        raise NotImplementedError

    def update(self, **kwargs: object) -> int:
        if set(kwargs) <= self.principal_neutral_fields:
            return super().update(**kwargs)  # type: ignore[misc]
        # Read before writing: the update may change the very columns this filters on.
        user_ids = self.principal_user_ids()
        updated = super().update(**kwargs)  # type: ignore[misc]
        invalidate_principals(user_ids)
        return updated

    def bulk_create(self, objs: object, *args: object, **kwargs: object) -> list[models.Model]:
        created = super().bulk_create(objs, *args, **kwargs)  # type: ignore[misc]
        invalidate_principals(self.principal_user_ids_of(created))
        return created


class UserQuerySet(PrincipalWritesMixin, models.QuerySet["User"]):
    principal_neutral_fields = frozenset({"last_login"})

    def principal_user_ids(self) -> list[uuid.UUID]:
        return list(self.values_list("pk", flat=True))

    def principal_user_ids_of(self, objs: list[models.Model]) -> list[uuid.UUID]:
        return [obj.pk for obj in objs]


class UserManager(BaseUserManager.from_queryset(UserQuerySet)):  # type: ignore[misc]
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra: object) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra: object) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra: object) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self._create_user(email, password, **extra)

    def get_by_natural_key(self, username: str | None) -> User:
        # Emails are stored lower-cased, so login is case-insensitive.
        return self.get(email=(username or "").lower())


class User(AbstractBaseUser, PermissionsMixin):
    """A person who logs in with an email address. `is_staff` marks Converzia staff."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email = models.EmailField(unique=True)
    full_name = models.CharField(max_length=200, blank=True)
    phone = models.CharField(max_length=32, blank=True)
    is_staff = models.BooleanField(default=False, help_text="Converzia staff: admin and cross-tenant access.")
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        db_table = "users"
        constraints = [
            models.CheckConstraint(condition=models.Q(email=Lower("email")), name="users_email_lowercase"),
        ]

    def __str__(self) -> str:
        return self.email

    def save(self, *args: object, **kwargs: object) -> None:
        self.email = (self.email or "").lower()
        super().save(*args, **kwargs)


class ApiTokenQuerySet(PrincipalWritesMixin, models.QuerySet["ApiToken"]):
    # The use stamp is written by authentication itself, at most once a minute.
    principal_neutral_fields = frozenset({"last_used_at"})

    def principal_user_ids(self) -> list[uuid.UUID]:
        return list(self.values_list("user_id", flat=True).distinct())

    def principal_user_ids_of(self, objs: list[models.Model]) -> list[uuid.UUID]:
        return [obj.user_id for obj in objs]  # type: ignore[attr-defined]


class ApiToken(models.Model):
    """A personal bearer token. Only its SHA-256 digest is stored; the token is shown once."""

    PREFIX = "cvz_"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, default="default")
    key_prefix = models.CharField(max_length=12, help_text="First characters of the token, to recognise it.")
    key_digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        db_table = "api_tokens"

    def __str__(self) -> str:
        return f"{self.key_prefix}… ({self.user})"

    @staticmethod
    def digest(raw_token: str) -> str:
        return hashlib.sha256(raw_token.encode()).hexdigest()

    @classmethod
    def generate(cls) -> str:
        return cls.PREFIX + secrets.token_urlsafe(32)

    @property
    def is_usable(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class OfferType(models.TextChoices):
    PROPERTY = "PROPERTY"
    AUTO = "AUTO"
    LOAN = "LOAN"
    INSURANCE = "INSURANCE"


class TenantStatus(models.TextChoices):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    ARCHIVED = "ARCHIVED"


class TenantQuerySet(PrincipalWritesMixin, models.QuerySet["Tenant"]):
    def principal_user_ids(self) -> list[uuid.UUID]:
        # Cached memberships carry their tenant's row: every member of these tenants.
        return list(
            TenantMember.objects.filter(tenant_id__in=self.values("pk"))
            .values_list("user_id", flat=True)
            .distinct()
        )

    def principal_user_ids_of(self, objs: list[models.Model]) -> list[uuid.UUID]:
        return []  # a new tenant has no members yet


class Tenant(TimestampedModel):
    """An advertiser: one client company whose leads, offers and credits are isolated from others."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    status = models.CharField(max_length=16, choices=TenantStatus.choices, default=TenantStatus.PENDING)
    default_score_threshold = models.PositiveSmallIntegerField(default=80)
    duplicate_window_days = models.PositiveSmallIntegerField(default=90)
    timezone = models.CharField(
        max_length=64, default="America/Argentina/Buenos_Aires", validators=[validate_timezone]
    )
    contact_email = models.EmailField(blank=True)
    contact_phone = models.CharField(max_length=32, blank=True)
    settings = models.JSONField(default=dict, blank=True)
    website = models.URLField(blank=True)
    description = models.TextField(blank=True)
    vertical = models.CharField(max_length=16, choices=OfferType.choices, default=OfferType.PROPERTY)
    logo_url = models.URLField(blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    rejected_at = models.DateTimeField(null=True, blank=True)
    rejected_reason = models.TextField(blank=True)
    trial_credits_granted = models.BooleanField(default=False)
    trial_credits_amount = models.PositiveIntegerField(default=0)
    trial_granted_at = models.DateTimeField(null=True, blank=True)
    trial_granted_by = models.ForeignKey(
        USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )

    objects = TenantQuerySet.as_manager()

    class Meta:
        db_table = "tenants"
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(slug__regex=r"^[a-z0-9-]+$"), name="tenants_slug_format"
            ),
            models.CheckConstraint(
                condition=models.Q(default_score_threshold__lte=100), name="tenants_score_threshold_range"
            ),
            choices_check("status", TenantStatus, "tenants_status_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class TenantRole(models.TextChoices):
    OWNER = "OWNER"
    ADMIN = "ADMIN"
    BILLING = "BILLING"
    VIEWER = "VIEWER"


class MembershipStatus(models.TextChoices):
    PENDING_APPROVAL = "PENDING_APPROVAL"
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    REVOKED = "REVOKED"


class TenantMemberQuerySet(PrincipalWritesMixin, TenantScopedQuerySet):
    """Members are tenant data like any other: team reads start from `scoped(TenantMember, tenant)`."""

    def principal_user_ids(self) -> list[uuid.UUID]:
        return list(self.values_list("user_id", flat=True).distinct())

    def principal_user_ids_of(self, objs: list[models.Model]) -> list[uuid.UUID]:
        return [obj.user_id for obj in objs]  # type: ignore[attr-defined]

    def active(self) -> TenantMemberQuerySet:
        return self.filter(status=MembershipStatus.ACTIVE)


class TenantMember(TimestampedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="members", db_index=False)
    user = models.ForeignKey(USER_MODEL, on_delete=models.CASCADE, related_name="memberships", db_index=False)
    role = models.CharField(max_length=16, choices=TenantRole.choices, default=TenantRole.VIEWER)
    status = models.CharField(
        max_length=20, choices=MembershipStatus.choices, default=MembershipStatus.PENDING_APPROVAL
    )
    invited_by = models.ForeignKey(
        USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    approved_by = models.ForeignKey(
        USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    rejected_at = models.DateTimeField(null=True, blank=True)
    rejected_reason = models.TextField(blank=True)

    objects = TenantMemberQuerySet.as_manager()

    class Meta:
        db_table = "tenant_members"
        constraints = [
            # Also serves "members of a tenant" lookups (tenant_id is its leading column).
            models.UniqueConstraint(fields=["tenant", "user"], name="tenant_members_tenant_user_uniq"),
            choices_check("role", TenantRole, "tenant_members_role_valid"),
            choices_check("status", MembershipStatus, "tenant_members_status_valid"),
        ]
        indexes = [
            # Tenant resolution on every request: the caller's ACTIVE memberships.
            models.Index(
                fields=["user"],
                name="idx_tenant_members_user_active",
                condition=models.Q(status="ACTIVE"),
            ),
            models.Index(
                fields=["tenant", "created_at"],
                name="idx_tenant_members_tenant_active_created",
                condition=models.Q(status="ACTIVE"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.role}, {self.status})"
