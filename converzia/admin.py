"""Staff admin for the kernel: users (email login), API tokens and tenant memberships.

`Tenant` is registered in `billing/admin.py`, not here: its actions (approve, trial credits,
purchases) call billing services, and the kernel must not import billing (the dependency arrows).
This module provides its base class, `TenantAdminBase`, with everything that is kernel-only.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import forms as auth_forms
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from converzia.admin_tools import (
    FastModelAdmin,
    NoDeleteMixin,
    TenantFilter,
    ViewOnlyInlineMixin,
    as_uuid,
    https_formfield,
)
from converzia.models import ApiToken, Tenant, TenantMember, TenantStatus, User
from converzia.services import api_token_issue, api_token_revoke

# --- Users ------------------------------------------------------------------------------------------


class UserCreationAdminForm(auth_forms.AdminUserCreationForm):
    """Django's admin creation form (password twice, hashed on save) for an email-login user."""

    class Meta:
        model = User
        fields = ("email", "full_name")

    def clean_email(self) -> str:
        # Stored lower-cased (a CHECK enforces it), so uniqueness is validated on the stored form.
        return self.cleaned_data["email"].lower()


class UserChangeAdminForm(auth_forms.UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"

    def clean_email(self) -> str:
        return self.cleaned_data["email"].lower()


class MembershipInline(ViewOnlyInlineMixin, admin.TabularInline):
    """A user's tenants, read-only here: memberships are edited from the tenant."""

    model = TenantMember
    fk_name = "user"
    fields = ("tenant", "role", "status", "approved_at", "created_at")
    readonly_fields = fields
    verbose_name_plural = "memberships"

    def get_queryset(self, request: HttpRequest) -> QuerySet[TenantMember]:
        return super().get_queryset(request).select_related("tenant")


@admin.register(User)
class UserAdmin(DjangoUserAdmin, FastModelAdmin):
    form = UserChangeAdminForm
    add_form = UserCreationAdminForm
    list_display = (
        "email",
        "full_name",
        "is_staff",
        "is_superuser",
        "is_active",
        "date_joined",
        "last_login",
    )
    list_filter = ("is_staff", "is_superuser", "is_active", "groups")
    search_fields = ("email", "full_name")
    ordering = ("email",)
    readonly_fields = ("last_login", "date_joined")
    inlines = (MembershipInline,)
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("full_name", "phone")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "full_name", "usable_password", "password1", "password2"),
            },
        ),
    )

    def get_inlines(self, request: HttpRequest, obj: User | None) -> tuple[type[admin.TabularInline], ...]:
        # A user being created has no memberships yet.
        return self.inlines if obj is not None else ()


# --- API tokens -------------------------------------------------------------------------------------


class TokenStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("usable", "Usable"), ("revoked", "Revoked"), ("expired", "Expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> QuerySet[ApiToken]:
        now = timezone.now()
        not_expired = Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        if self.value() == "usable":
            return queryset.filter(not_expired, revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now)
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(NoDeleteMixin, FastModelAdmin):
    """Tokens are issued here (the raw value is shown once) and revoked, never deleted or re-keyed."""

    list_display = (
        "key_prefix",
        "name",
        "user",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
        "usable",
    )
    list_filter = (TokenStateFilter,)
    list_select_related = ("user",)
    search_fields = ("^key_prefix", "user__email", "name")
    search_help_text = "Token prefix (cvz_…), user email or token name."
    autocomplete_fields = ("user",)
    ordering = ("-created_at",)
    actions = ("revoke_tokens",)

    @admin.display(boolean=True)
    def usable(self, obj: ApiToken) -> bool:
        return obj.is_usable

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        if obj is None:
            return ["user", "name", "expires_at"]
        return ["user", "name", "key_prefix", "created_at", "last_used_at", "expires_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        if obj is None:
            return []
        return ["user", "key_prefix", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request: HttpRequest, obj: ApiToken, form: forms.ModelForm, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = api_token_issue(user=obj.user, name=obj.name, expires_at=obj.expires_at)
        # The rest of the add flow (log entry, redirect) continues with the row the service saved.
        for field in ApiToken._meta.concrete_fields:
            setattr(obj, field.attname, getattr(issued.token, field.attname))
        obj._state.adding = False
        obj._state.db = issued.token._state.db
        self.message_user(
            request,
            format_html(
                "New API token for {}: <code>{}</code> — copy it now. It is shown only this once; "
                "only its digest is stored.",
                obj.user,
                issued.raw,
            ),
            messages.WARNING,
        )

    @admin.action(description="Revoke selected tokens")
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = 0
        for token in queryset.filter(revoked_at__isnull=True).order_by("pk"):
            api_token_revoke(token=token)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)


# --- Tenants and members ----------------------------------------------------------------------------


@admin.register(TenantMember)
class TenantMemberAdmin(FastModelAdmin):
    list_display = ("user", "tenant", "role", "status", "created_at", "approved_at")
    list_filter = ("status", "role", TenantFilter)
    list_select_related = ("user", "tenant")
    search_fields = ("user__email", "user__full_name", "tenant__name")
    search_help_text = "Member email or name, or tenant name (substring)."
    autocomplete_fields = ("user", "tenant")
    readonly_fields = (
        "invited_by",
        "approved_by",
        "approved_at",
        "rejected_at",
        "rejected_reason",
        "created_at",
        "updated_at",
    )
    ordering = ("-created_at",)


class TenantMemberInline(admin.TabularInline):
    model = TenantMember
    fk_name = "tenant"
    extra = 0
    fields = ("user", "role", "status", "approved_at", "created_at")
    readonly_fields = ("approved_at", "created_at")
    autocomplete_fields = ("user",)
    show_change_link = True


class TenantAdminForm(forms.ModelForm):
    class Meta:
        model = Tenant
        formfield_callback = https_formfield
        # The editable fields; the admin's fieldsets add the read-only ones.
        fields = (
            "name",
            "slug",
            "status",
            "vertical",
            "contact_email",
            "contact_phone",
            "website",
            "logo_url",
            "description",
            "default_score_threshold",
            "duplicate_window_days",
            "timezone",
            "settings",
        )

    def clean_status(self) -> str:
        status = self.cleaned_data["status"]
        previous = self.initial.get("status") if self.instance.pk else None
        if status == TenantStatus.ACTIVE and previous != TenantStatus.ACTIVE:
            # Activation has side effects that must happen together (billing.services.tenant_approve).
            raise ValidationError(
                "Use the “Approve” action to activate a tenant: it also activates its pending "
                "members, creates its default pricing and grants its trial credits."
            )
        return status


class TenantAdminBase(NoDeleteMixin, FastModelAdmin):
    """Tenants: a small table. Deleting one would cascade to millions of rows; archive it instead."""

    form = TenantAdminForm
    list_display = (
        "name",
        "slug",
        "status",
        "vertical",
        "contact_email",
        "trial_credits_granted",
        "created_at",
        "activated_at",
    )
    list_filter = ("status", "vertical", "trial_credits_granted")
    search_fields = ("name", "slug", "contact_email")
    search_help_text = "Name, slug or contact email (substring), or a tenant id."
    ordering = ("name",)
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = (
        "id",
        "created_at",
        "updated_at",
        "activated_at",
        "rejected_at",
        "rejected_reason",
        "trial_credits_granted",
        "trial_credits_amount",
        "trial_granted_at",
        "trial_granted_by",
    )
    fieldsets = (
        (None, {"fields": ("id", "name", "slug", "status", "vertical")}),
        (
            "Contact",
            {"fields": ("contact_email", "contact_phone", "website", "logo_url", "description")},
        ),
        (
            "Lead handling",
            {"fields": ("default_score_threshold", "duplicate_window_days", "timezone", "settings")},
        ),
        (
            "Approval and trial",
            {
                "fields": (
                    "activated_at",
                    "rejected_at",
                    "rejected_reason",
                    "trial_credits_granted",
                    "trial_credits_amount",
                    "trial_granted_at",
                    "trial_granted_by",
                )
            },
        ),
        ("Timestamps", {"fields": ("created_at", "updated_at")}),
    )
    inlines: tuple[type[admin.options.InlineModelAdmin], ...] = (TenantMemberInline,)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Tenant], search_term: str
    ) -> tuple[QuerySet[Tenant], bool]:
        tenant_id = as_uuid(search_term)
        if tenant_id is not None:
            return queryset.filter(pk=tenant_id), False
        return super().get_search_results(request, queryset, search_term)

    def get_prepopulated_fields(self, request: HttpRequest, obj: Any = None) -> dict[str, Any]:
        # The slug is the tenant's stable key once it exists; only a new tenant derives it from the name.
        return self.prepopulated_fields if obj is None else {}
