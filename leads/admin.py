"""Staff admin for offers, ad mappings, leads, lead sources, lead_offers and lead events.

`leads`, `lead_sources`, `lead_offers` and `lead_events` hold millions of rows, so their changelists:
- search by exact, indexed values only (ids, a phone normalised to E.164, a leadgen id), resolving a
  phone or leadgen id to ids first with a primary-key or unique-index lookup;
- order by an index: `-updated_at` under a tenant filter on lead_offers (the index
  `(tenant, updated_at DESC, id DESC)`), otherwise `-pk`. UUIDv4 order is arbitrary, but it is the
  only ordering an index serves on the whole table; newest-first over all tenants would need an index
  on `updated_at` (or `created_at`) alone. See docs/admin.md;
- disable column sorting and facet counts, and count with `FastCountPaginator`.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.text import Truncator

from converzia.admin_tools import (
    ExactSearchMixin,
    FastModelAdmin,
    NoAddMixin,
    NoDeleteMixin,
    TenantFilter,
    ViewOnlyInlineMixin,
    ViewOnlyMixin,
    action_objects,
    admin_change_link,
    any_of,
    as_uuid,
    form_action,
    limited_inline_formset,
    run_for_each,
)
from converzia.models import Tenant
from leads.errors import InvalidPhone
from leads.forms import AdOfferMapAdminForm, LeadAdminForm, LeadOfferTransitionForm
from leads.ingestion import inbox_changes_requeue, inbox_changes_routed_tenants, inbox_events_requeue
from leads.meta import page_access_token_configured
from leads.models import (
    ActorType,
    AdOfferMap,
    InboxChange,
    InboxEvent,
    Lead,
    LeadEvent,
    LeadOffer,
    LeadSource,
    Offer,
)
from leads.phones import normalize_phone
from leads.services import ad_mapping_set_active, lead_offer_transition

# A lead_offer's timeline can be long (messages, retries); the change page shows the latest ones.
EVENTS_SHOWN = 50
LEAD_OFFERS_SHOWN = 50
# A leadgen id or phone maps to a handful of rows; the cap only bounds a pathological term.
RESOLVED_IDS_LIMIT = 1000


# --- Search helpers (also used by the billing and deliveries admins) -------------------------------


def phone_candidates(term: str) -> list[str]:
    """E.164 numbers `term` may mean, or [] when it is not a phone number."""
    try:
        e164 = normalize_phone(term)
    except InvalidPhone:
        return []
    candidates = [e164]
    # Argentine mobiles are stored with the 9 (+54 9 11 …) but are often typed without it.
    if e164.startswith("+54") and not e164.startswith("+549"):
        candidates.append("+549" + e164[3:])
    return candidates


def lead_ids_for_phone(term: str) -> list[Any] | None:
    """Ids of the leads with phone `term` (any format), via the unique index; None if not a phone."""
    candidates = phone_candidates(term)
    if not candidates:
        return None
    return list(Lead.objects.filter(phone__in=candidates).values_list("pk", flat=True))


def lead_offer_ids_for_phone(term: str) -> list[Any] | None:
    """Ids of the lead_offers of the lead with phone `term`; None if `term` is not a phone."""
    lead_ids = lead_ids_for_phone(term)
    if lead_ids is None:
        return None
    if not lead_ids:
        return []
    # Served by the (lead, offer, tenant) unique index, whose leading column is lead_id.
    return list(
        LeadOffer.objects.filter(lead_id__in=lead_ids).values_list("pk", flat=True)[:RESOLVED_IDS_LIMIT]
    )


def leadgen_matches(term: str) -> list[Q]:
    """`(lead, tenant)` conditions for Meta leadgen id `term` (digits), via idx_lead_sources_leadgen_id.

    Lead_offers are matched by lead and tenant rather than through `lead_source_id`, which has no
    index on lead_offers; `(lead, …, tenant)` is served by the unique index.
    """
    if not term.isdigit():
        return []
    pairs = LeadSource.objects.filter(leadgen_id=term).values_list("lead_id", "tenant_id")[
        :RESOLVED_IDS_LIMIT
    ]
    return [Q(lead_id=lead_id, tenant_id=tenant_id) for lead_id, tenant_id in pairs]


# --- Offers and ad mappings (small tables) ----------------------------------------------------------


@admin.register(Offer)
class OfferAdmin(NoDeleteMixin, FastModelAdmin):
    """Offers are archived, never deleted: deleting one would detach its lead_offers."""

    list_display = (
        "name",
        "tenant",
        "offer_type",
        "status",
        "approval_status",
        "city",
        "priority",
        "created_at",
    )
    list_filter = (TenantFilter, "status", "approval_status", "offer_type")
    list_select_related = ("tenant",)
    search_fields = ("name", "slug")
    search_help_text = "Offer name or slug (substring), or an offer id."
    autocomplete_fields = ("tenant",)
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("id", "submitted_at", "approved_at", "approved_by", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("id", "tenant", "name", "slug", "offer_type", "status", "priority")}),
        ("Description", {"fields": ("short_description", "description", "image_url")}),
        (
            "Location and price",
            {
                "fields": (
                    "address",
                    "city",
                    "zone",
                    "country",
                    "latitude",
                    "longitude",
                    "price_from",
                    "price_to",
                    "currency",
                )
            },
        ),
        (
            "Approval",
            {"fields": ("approval_status", "submitted_at", "approved_at", "approved_by", "rejection_reason")},
        ),
        ("Other", {"fields": ("settings", "created_at", "updated_at")}),
    )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Offer], search_term: str
    ) -> tuple[QuerySet[Offer], bool]:
        offer_id = as_uuid(search_term)
        if offer_id is not None:
            return queryset.filter(pk=offer_id), False
        return super().get_search_results(request, queryset, search_term)

    def get_prepopulated_fields(self, request: HttpRequest, obj: Any = None) -> dict[str, Any]:
        return self.prepopulated_fields if obj is None else {}


@admin.register(AdOfferMap)
class AdOfferMapAdmin(FastModelAdmin):
    """Saving an active mapping that names an offer routes the ad's PENDING_MAPPING leads to it."""

    form = AdOfferMapAdminForm
    list_display = (
        "ad_id",
        "ad_name",
        "tenant",
        "offer",
        "platform",
        "is_active",
        "campaign_name",
        "created_at",
    )
    list_filter = (TenantFilter, "is_active", "platform")
    list_select_related = ("tenant", "offer")
    search_fields = ("=ad_id", "=adset_id", "=campaign_id", "=form_id", "ad_name", "campaign_name")
    search_help_text = "Ad, ad set, campaign or form id (exact), or ad or campaign name (substring)."
    autocomplete_fields = ("tenant", "offer")
    readonly_fields = ("created_by", "created_at", "updated_at")
    ordering = ("-created_at",)
    actions = ("activate_mappings", "deactivate_mappings")

    def save_model(self, request: HttpRequest, obj: AdOfferMap, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        routing_may_apply = not change or {"is_active", "offer"} & set(form.changed_data)
        if obj.is_active and routing_may_apply:
            moved = ad_mapping_set_active(mapping=obj, is_active=True, actor=request.user)
            if obj.offer_id is not None:
                self.message_user(
                    request, f"{moved} pending lead offer(s) routed to {obj.offer}.", messages.INFO
                )
            self.message_user(
                request, "Unrouted Meta changes for this ad were queued for processing.", messages.INFO
            )

    def _set_active(self, request: HttpRequest, queryset: QuerySet[AdOfferMap], *, is_active: bool) -> None:
        done = run_for_each(
            self,
            request,
            queryset.order_by("pk"),
            lambda mapping: ad_mapping_set_active(mapping=mapping, is_active=is_active, actor=request.user),
        )
        moved = sum(result for _, result in done)
        verb = "Activated" if is_active else "Deactivated"
        self.message_user(
            request, f"{verb} {len(done)} mapping(s); {moved} pending lead offer(s) routed.", messages.SUCCESS
        )

    @admin.action(description="Activate (and route their pending leads)")
    def activate_mappings(self, request: HttpRequest, queryset: QuerySet[AdOfferMap]) -> None:
        self._set_active(request, queryset, is_active=True)

    @admin.action(description="Deactivate")
    def deactivate_mappings(self, request: HttpRequest, queryset: QuerySet[AdOfferMap]) -> None:
        self._set_active(request, queryset, is_active=False)


# --- Leads (millions of rows) -----------------------------------------------------------------------


class LeadOfferOfLeadInline(ViewOnlyInlineMixin, admin.TabularInline):
    model = LeadOffer
    fk_name = "lead"
    formset = limited_inline_formset(LEAD_OFFERS_SHOWN)
    fields = ("tenant", "offer", "status", "score_total", "billing_eligibility", "updated_at")
    readonly_fields = fields
    ordering = ("-updated_at",)
    verbose_name_plural = f"lead offers (latest {LEAD_OFFERS_SHOWN})"

    def get_queryset(self, request: HttpRequest) -> QuerySet[LeadOffer]:
        return super().get_queryset(request).select_related("tenant", "offer")


@admin.register(Lead)
class LeadAdmin(NoAddMixin, NoDeleteMixin, ExactSearchMixin, FastModelAdmin):
    """Leads arrive through ingestion and are anonymised, never deleted; opt-out is a service's job."""

    form = LeadAdminForm
    list_display = ("phone", "full_name", "email", "opted_out", "country_code", "created_at")
    list_filter = ("opted_out",)
    search_fields = ("=phone", "=email", "^full_name")
    search_help_text = "Phone (any format), email (exact), name prefix, or a lead id."
    sortable_by = ()
    ordering = ("-pk",)
    readonly_fields = (
        "id",
        "opted_out",
        "opted_out_at",
        "opt_out_reason",
        "first_contact_at",
        "last_contact_at",
        "created_at",
        "updated_at",
    )
    inlines = (LeadOfferOfLeadInline,)

    def exact_search_q(self, term: str) -> Q | None:
        lead_id = as_uuid(term)
        if lead_id is not None:
            return Q(pk=lead_id)
        candidates = phone_candidates(term)
        if candidates:
            return Q(phone__in=candidates)
        if "@" in term:
            # No index on email: a sequential scan of leads (docs/admin.md proposes one).
            return Q(email__iexact=term)
        if term.startswith("+") or term.replace(" ", "").replace("-", "").isdigit():
            # Looks like a phone but does not parse: only an exact stored value can match.
            return Q(phone=term)
        # No index on full_name either; a prefix match is the cheapest scan and what staff type.
        return Q(full_name__istartswith=term)


@admin.register(LeadSource)
class LeadSourceAdmin(ViewOnlyMixin, ExactSearchMixin, FastModelAdmin):
    """Attribution rows, written once by ingestion."""

    list_display = (
        "leadgen_id",
        "platform",
        "tenant",
        "lead_phone",
        "ad_id",
        "campaign_id",
        "utm_source",
        "attributed_cost",
        "created_at",
    )
    list_filter = (TenantFilter,)
    list_select_related = ("tenant", "lead")
    search_fields = ("=leadgen_id",)
    search_help_text = "Exact: Meta leadgen id, lead phone (any format), source id or lead id."
    sortable_by = ()
    ordering = ("-pk",)
    # idx_lead_sources_tenant_created.
    indexed_orderings = ((("tenant",), ("-created_at",)),)

    @admin.display(description="lead")
    def lead_phone(self, obj: LeadSource) -> str:
        return admin_change_link(Lead, obj.lead_id, obj.lead.phone)

    def exact_search_q(self, term: str) -> Q | None:
        source_id = as_uuid(term)
        if source_id is not None:
            return Q(pk=source_id) | Q(lead_id=source_id)
        conditions: list[Q] = []
        lead_ids = lead_ids_for_phone(term)
        if lead_ids:
            conditions.append(Q(lead_id__in=lead_ids))
        if term.isdigit():
            conditions.append(Q(leadgen_id=term))
        if lead_ids is None and not term.isdigit():
            return None
        return any_of(conditions)


class LeadEventInline(ViewOnlyInlineMixin, admin.TabularInline):
    model = LeadEvent
    fk_name = "lead_offer"
    formset = limited_inline_formset(EVENTS_SHOWN)
    fields = ("created_at", "event_type", "actor_type", "details", "trace_id")
    readonly_fields = fields
    # Served backwards by idx_lead_events_lead_offer_created.
    ordering = ("-created_at",)
    verbose_name_plural = f"events (latest {EVENTS_SHOWN})"


@admin.register(LeadOffer)
class LeadOfferAdmin(NoAddMixin, NoDeleteMixin, ExactSearchMixin, FastModelAdmin):
    """The funnel rows. The status is read-only here and moves only through the "change status"
    action, which calls the transition service (matrix, event, cache invalidation)."""

    list_display = (
        "short_id",
        "lead_phone",
        "tenant",
        "offer",
        "status",
        "billing_eligibility",
        "score_total",
        "contact_attempts",
        "updated_at",
    )
    list_display_links = ("short_id",)
    list_filter = (TenantFilter, "status", "billing_eligibility")
    list_select_related = ("lead", "tenant", "offer")
    search_fields = ("=id",)
    search_help_text = "Exact: lead offer id, lead id, lead phone (any format) or Meta leadgen id."
    sortable_by = ()
    ordering = ("-pk",)
    # Under a tenant filter (with or without status), idx_lead_offers_tenant_updated /
    # idx_lead_offers_tenant_status_updated serve `updated_at DESC, id DESC` with no sort.
    indexed_orderings = ((("tenant",), ("-updated_at",)),)
    readonly_fields = (
        "id",
        "lead",
        "tenant",
        "offer",
        "lead_source",
        "status",
        "previous_status",
        "status_changed_at",
        "qualified_at",
        "disqualification_category",
        "disqualification_reason",
        "score_total",
        "score_breakdown",
        "scored_at",
        "contact_attempts",
        "last_attempt_at",
        "reactivation_count",
        "first_response_at",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("id", "lead", "tenant", "offer", "lead_source")}),
        (
            "Status",
            {
                "description": "Change the status with the “Change status” action on the list.",
                "fields": (
                    "status",
                    "previous_status",
                    "status_changed_at",
                    "qualified_at",
                    "disqualification_category",
                    "disqualification_reason",
                ),
            },
        ),
        (
            "Qualification",
            {"fields": ("qualification_fields", "score_total", "score_breakdown", "scored_at")},
        ),
        ("Billing", {"fields": ("billing_eligibility", "billing_notes")}),
        (
            "Contact",
            {
                "fields": (
                    "contact_attempts",
                    "last_attempt_at",
                    "next_attempt_at",
                    "reactivation_count",
                    "first_response_at",
                )
            },
        ),
        ("Timestamps", {"fields": ("created_at", "updated_at")}),
    )
    inlines = (LeadEventInline,)
    actions = ("change_status",)

    @admin.display(description="id")
    def short_id(self, obj: LeadOffer) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="lead")
    def lead_phone(self, obj: LeadOffer) -> str:
        return admin_change_link(Lead, obj.lead_id, f"{obj.lead.phone} {obj.lead.full_name}".strip())

    def exact_search_q(self, term: str) -> Q | None:
        row_id = as_uuid(term)
        if row_id is not None:
            return Q(pk=row_id) | Q(lead_id=row_id)
        lead_ids = lead_ids_for_phone(term)
        leadgen = leadgen_matches(term)
        if lead_ids is None and not term.isdigit():
            return None
        conditions = [Q(lead_id__in=lead_ids)] if lead_ids else []
        return any_of(conditions + leadgen)

    def transition_lead_offer(
        self,
        *,
        lead_offer: LeadOffer,
        to_status: str,
        actor: Any,
        reason: str,
        disqualification_category: str,
    ) -> LeadOffer:
        """The status change behind the action. The deliveries app replaces it (its admin re-registers
        this class) so that LEAD_READY creates the lead's delivery; leads knows nothing of deliveries."""
        return lead_offer_transition(
            lead_offer=lead_offer,
            to_status=to_status,
            actor=actor,
            actor_type=ActorType.ADMIN,
            reason=reason,
            disqualification_category=disqualification_category,
        )

    @admin.action(description="Change status (transition rules apply)…")
    def change_status(self, request: HttpRequest, queryset: QuerySet[LeadOffer]) -> TemplateResponse | None:
        def apply(request: HttpRequest, objects: list[LeadOffer], data: dict[str, Any]) -> None:
            to_status = data["to_status"]
            moving = [obj for obj in objects if obj.status != to_status]
            done = run_for_each(
                self,
                request,
                moving,
                lambda obj: self.transition_lead_offer(
                    lead_offer=obj,
                    to_status=to_status,
                    actor=request.user,
                    reason=data["reason"],
                    disqualification_category=data["disqualification_category"],
                ),
            )
            if done:
                self.message_user(
                    request, f"Moved {len(done)} lead offer(s) to {to_status}.", messages.SUCCESS
                )
            unchanged = len(objects) - len(moving)
            if unchanged:
                self.message_user(
                    request, f"{unchanged} lead offer(s) were already {to_status}.", messages.INFO
                )

        return form_action(
            self,
            request,
            queryset,
            form_class=LeadOfferTransitionForm,
            title="Change lead offer status",
            intro="Each lead offer moves only if the transition matrix allows it; the others are reported.",
            submit_label="Change status",
            apply=apply,
        )


@admin.register(LeadEvent)
class LeadEventAdmin(ViewOnlyMixin, ExactSearchMixin, FastModelAdmin):
    """The append-only audit trail: read-only."""

    list_display = (
        "created_at",
        "event_type",
        "actor_type",
        "tenant",
        "lead_offer_link",
        "lead_link",
        "trace_id",
    )
    list_filter = (TenantFilter, "event_type", "actor_type")
    list_select_related = ("tenant",)
    search_fields = ("=lead_offer__id",)
    search_help_text = "Exact: lead offer id, lead id, event id or lead phone (any format)."
    sortable_by = ()
    ordering = ("-pk",)
    # idx_lead_events_type_created (and ..._tenant_type_created under a tenant filter).
    indexed_orderings = ((("event_type__exact",), ("-created_at",)),)

    @admin.display(description="lead offer")
    def lead_offer_link(self, obj: LeadEvent) -> str:
        return admin_change_link(LeadOffer, obj.lead_offer_id)

    @admin.display(description="lead")
    def lead_link(self, obj: LeadEvent) -> str:
        return admin_change_link(Lead, obj.lead_id)

    def exact_search_q(self, term: str) -> Q | None:
        some_id = as_uuid(term)
        if some_id is not None:
            # pk, idx_lead_events_lead_offer_created and the lead_id FK index.
            return Q(pk=some_id) | Q(lead_offer_id=some_id) | Q(lead_id=some_id)
        lead_ids = lead_ids_for_phone(term)
        if lead_ids is None:
            return None
        return any_of([Q(lead_id__in=lead_ids)] if lead_ids else [])


# --- Meta webhook inbox -------------------------------------------------------------------------------


class InboxErrorFilter(admin.SimpleListFilter):
    """What went wrong, by the prefix of the error text each failure path writes."""

    title = "error"
    parameter_name = "error"
    KINDS = {
        "any": ("Any error", ~Q(last_error="")),
        "graph": ("Graph API", Q(last_error__startswith="Graph API") | Q(last_error__startswith="The Graph")),
        "phone": ("No usable phone", Q(last_error__startswith="No usable phone")),
        "mapping": ("No ad mapping", Q(last_error__startswith="No active ad mapping")),
        "organic": ("No ad id", Q(last_error__startswith="The change has no ad_id")),
        "token": (
            "Access token missing or rejected",
            Q(last_error__startswith="META_PAGE_ACCESS_TOKEN"),
        ),
        "none": ("No error", Q(last_error="")),
    }

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in self.KINDS.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        kind = self.KINDS.get(self.value() or "")
        return queryset.filter(kind[1]) if kind else queryset


def _pretty_json(value: Any) -> str:
    return format_html("<pre style='white-space:pre-wrap;margin:0'>{}</pre>", json.dumps(value, indent=2))


class InboxDisplayMixin:
    """Columns and the action permission shared by the inbox pages."""

    @admin.display(description="last error")
    def short_error(self, obj: InboxEvent | InboxChange) -> str:
        return Truncator(obj.last_error).chars(80)

    @admin.display(description="lead offer")
    def lead_offer_link(self, obj: InboxChange) -> str:
        return admin_change_link(LeadOffer, obj.lead_offer_id) if obj.lead_offer_id else "—"

    # Reprocessing is an operational action, not an edit: allowed to whoever may view the inbox.
    def has_reprocess_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)  # type: ignore[attr-defined]

    def warn_if_token_missing(self, request: HttpRequest) -> None:
        # Requeued changes that need a Graph fetch would only be parked again.
        if not page_access_token_configured():
            self.message_user(  # type: ignore[attr-defined]
                request,
                "META_PAGE_ACCESS_TOKEN is not configured here: changes that need a Graph fetch "
                "will be parked again until it is set.",
                messages.WARNING,
            )


class InboxChangeOfEventInline(InboxDisplayMixin, ViewOnlyInlineMixin, admin.TabularInline):
    model = InboxChange
    formset = limited_inline_formset(LEAD_OFFERS_SHOWN)
    fields = ("position", "leadgen_id", "ad_id", "status", "attempts", "last_error", "lead_offer_link")
    readonly_fields = fields
    ordering = ("position",)


@admin.register(InboxEvent)
class InboxEventAdmin(InboxDisplayMixin, ViewOnlyMixin, ExactSearchMixin, FastModelAdmin):
    """Every signed POST from Meta, as received. "Reprocess" re-runs its parked and stuck changes."""

    list_display = ("id", "received_at", "status", "change_count", "attempts", "short_error", "processed_at")
    list_filter = ("status", InboxErrorFilter)
    search_fields = ("=id",)
    search_help_text = "Exact: inbox event number or a Meta leadgen id."
    sortable_by = ()
    ordering = ("-pk",)
    fields = (
        "id",
        "received_at",
        "status",
        "object",
        "change_count",
        "leadgen_ids",
        "attempts",
        "last_error",
        "processed_at",
        "request_id",
        "payload_pretty",
    )
    readonly_fields = fields
    inlines = (InboxChangeOfEventInline,)
    actions = ("reprocess",)

    @admin.display(description="payload")
    def payload_pretty(self, obj: InboxEvent) -> str:
        return _pretty_json(obj.payload)

    def exact_search_q(self, term: str) -> Q | None:
        if not term.isdigit():
            return None
        event_ids = InboxChange.objects.filter(leadgen_id=term).values_list("event_id", flat=True)[
            :RESOLVED_IDS_LIMIT
        ]
        # An id beyond bigint range can only be a leadgen id.
        by_pk = Q(pk=int(term)) if int(term) < 2**63 else Q(pk__in=[])
        return by_pk | Q(pk__in=list(event_ids))

    @admin.action(description="Reprocess (parked changes and stuck jobs)", permissions=["reprocess"])
    def reprocess(self, request: HttpRequest, queryset: QuerySet[InboxEvent]) -> None:
        events = action_objects(self, request, queryset)
        if events is None:
            return
        self.warn_if_token_missing(request)
        requeued = inbox_events_requeue([event.pk for event in events])
        self.message_user(
            request,
            f"{len(events)} event(s) queued for processing; "
            f"{requeued} parked change(s) sent back to the queue.",
            messages.SUCCESS,
        )


@admin.register(InboxChange)
class InboxChangeAdmin(InboxDisplayMixin, ViewOnlyMixin, ExactSearchMixin, FastModelAdmin):
    """One row per leadgen change. UNROUTED and FAILED rows wait here for staff; nothing is dropped."""

    list_display = (
        "id",
        "leadgen_id",
        "ad_id",
        "status",
        "tenant_routed",
        "attempts",
        "short_error",
        "event_link",
        "lead_offer_link",
        "created_at",
    )
    list_filter = ("status", InboxErrorFilter, TenantFilter)
    list_select_related = ("tenant",)
    search_fields = ("=leadgen_id",)
    search_help_text = "Exact: Meta leadgen id or ad id."
    sortable_by = ()
    ordering = ("-pk",)
    # idx_inbox_changes_tenant_created.
    indexed_orderings = ((("tenant",), ("-created_at",)),)
    fields = (
        "id",
        "event_link",
        "position",
        "status",
        "leadgen_id",
        "page_id",
        "form_id",
        "ad_id",
        "adgroup_id",
        "submitted_at",
        "tenant_routed",
        "lead_offer_link",
        "attempts",
        "last_error",
        "created_at",
        "processed_at",
        "value_pretty",
    )
    readonly_fields = fields
    actions = ("reprocess",)

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        # Resolve the page's tenants in one query (the page is evaluated here and cached for the
        # template). Not a Subquery annotation: the paginator's bounded count would run it per row.
        tenants = inbox_changes_routed_tenants(changelist.result_list)
        for change in changelist.result_list:
            change.routed_tenant = tenants.get(change.pk)
        return changelist

    @admin.display(description="tenant")
    def tenant_routed(self, obj: InboxChange) -> str:
        """The stored tenant, linked; before a job stores it, the ad mapping's (marked as such)."""
        if not hasattr(obj, "routed_tenant"):
            # The change page: a single object, so one lookup.
            obj.routed_tenant = inbox_changes_routed_tenants([obj]).get(obj.pk)
        tenant = obj.routed_tenant
        if tenant is None:
            return "-"
        if obj.tenant_id is not None:
            return admin_change_link(Tenant, tenant.pk, tenant.name)
        return format_html("{} (by ad mapping)", admin_change_link(Tenant, tenant.pk, tenant.name))

    @admin.display(description="event")
    def event_link(self, obj: InboxChange) -> str:
        return admin_change_link(InboxEvent, obj.event_id, f"#{obj.event_id}")

    @admin.display(description="change value")
    def value_pretty(self, obj: InboxChange) -> str:
        return _pretty_json(obj.value)

    def exact_search_q(self, term: str) -> Q | None:
        if not term.isdigit():
            return None
        return Q(leadgen_id=term) | Q(ad_id=term)

    @admin.action(description="Reprocess (unrouted and failed only)", permissions=["reprocess"])
    def reprocess(self, request: HttpRequest, queryset: QuerySet[InboxChange]) -> None:
        changes = action_objects(self, request, queryset)
        if changes is None:
            return
        self.warn_if_token_missing(request)
        requeued = inbox_changes_requeue(changes)
        skipped = len(changes) - requeued
        message = f"{requeued} change(s) queued for processing."
        if skipped:
            message += f" {skipped} skipped: only UNROUTED and FAILED changes are reprocessed."
        self.message_user(request, message, messages.SUCCESS if requeued else messages.WARNING)
