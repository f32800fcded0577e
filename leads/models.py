"""Offers, ad routing, leads and the per-tenant funnel rows (lead_offers) with their events."""

from __future__ import annotations

import uuid

from django.conf import settings as django_settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

from converzia.models import OfferType, Tenant, TimestampedModel, choices_check
from converzia.tenancy import TenantScopedQuerySet

# Bound once: several models have a field called `settings`.
USER_MODEL = django_settings.AUTH_USER_MODEL


class OfferStatus(models.TextChoices):
    DRAFT = "DRAFT"
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    ARCHIVED = "ARCHIVED"


class OfferApprovalStatus(models.TextChoices):
    DRAFT = "DRAFT"
    PENDING_APPROVAL = "PENDING_APPROVAL"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class AdPlatform(models.TextChoices):
    META = "META"
    TIKTOK = "TIKTOK"
    GOOGLE = "GOOGLE"
    LINKEDIN = "LINKEDIN"


class LeadOfferStatus(models.TextChoices):
    PENDING_MAPPING = "PENDING_MAPPING"
    TO_BE_CONTACTED = "TO_BE_CONTACTED"
    CONTACTED = "CONTACTED"
    ENGAGED = "ENGAGED"
    QUALIFYING = "QUALIFYING"
    SCORED = "SCORED"
    LEAD_READY = "LEAD_READY"
    SENT_TO_DEVELOPER = "SENT_TO_DEVELOPER"
    COOLING = "COOLING"
    REACTIVATION = "REACTIVATION"
    DISQUALIFIED = "DISQUALIFIED"
    STOPPED = "STOPPED"
    HUMAN_HANDOFF = "HUMAN_HANDOFF"


class BillingEligibility(models.TextChoices):
    CHARGEABLE = "CHARGEABLE"
    NOT_CHARGEABLE_DUPLICATE = "NOT_CHARGEABLE_DUPLICATE"
    NOT_CHARGEABLE_SPAM = "NOT_CHARGEABLE_SPAM"
    NOT_CHARGEABLE_INCOMPLETE = "NOT_CHARGEABLE_INCOMPLETE"
    NOT_CHARGEABLE_OUT_OF_ZONE = "NOT_CHARGEABLE_OUT_OF_ZONE"
    PENDING = "PENDING"


class DisqualificationCategory(models.TextChoices):
    PRICE_TOO_HIGH = "PRICE_TOO_HIGH"
    PRICE_TOO_LOW = "PRICE_TOO_LOW"
    WRONG_ZONE = "WRONG_ZONE"
    WRONG_TYPOLOGY = "WRONG_TYPOLOGY"
    NO_RESPONSE = "NO_RESPONSE"
    NOT_INTERESTED = "NOT_INTERESTED"
    MISSING_AMENITY = "MISSING_AMENITY"
    DUPLICATE = "DUPLICATE"
    OTHER = "OTHER"


class LeadEventType(models.TextChoices):
    CREATED = "CREATED"
    STATUS_CHANGE = "STATUS_CHANGE"
    FIELD_UPDATED = "FIELD_UPDATED"
    SCORE_CALCULATED = "SCORE_CALCULATED"
    MESSAGE_SENT = "MESSAGE_SENT"
    MESSAGE_RECEIVED = "MESSAGE_RECEIVED"
    DELIVERY_ATTEMPTED = "DELIVERY_ATTEMPTED"
    DELIVERY_COMPLETED = "DELIVERY_COMPLETED"
    DELIVERY_FAILED = "DELIVERY_FAILED"
    CREDIT_CONSUMED = "CREDIT_CONSUMED"
    CREDIT_REFUNDED = "CREDIT_REFUNDED"
    OPT_OUT = "OPT_OUT"
    REACTIVATION_STARTED = "REACTIVATION_STARTED"
    MANUAL_ACTION = "MANUAL_ACTION"
    # v1 wrote these two without declaring them (DOMAIN.md §1); here they are members.
    DELIVERY_DEAD_LETTER = "DELIVERY_DEAD_LETTER"
    PII_DELETED = "PII_DELETED"


class ActorType(models.TextChoices):
    SYSTEM = "SYSTEM"
    BOT = "BOT"
    OPERATOR = "OPERATOR"
    ADMIN = "ADMIN"
    LEAD = "LEAD"


class Offer(TimestampedModel):
    """One project or product a tenant advertises."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed through the (tenant, slug) unique constraint.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="offers", db_index=False)
    name = models.CharField(max_length=200)
    # Indexed through the (tenant, slug) unique constraint, not on its own.
    slug = models.SlugField(max_length=120, db_index=False)
    offer_type = models.CharField(max_length=16, choices=OfferType.choices, default=OfferType.PROPERTY)
    status = models.CharField(max_length=16, choices=OfferStatus.choices, default=OfferStatus.DRAFT)
    description = models.TextField(blank=True)
    short_description = models.CharField(max_length=300, blank=True)
    image_url = models.URLField(blank=True)
    address = models.CharField(max_length=300, blank=True)
    city = models.CharField(max_length=120, blank=True)
    zone = models.CharField(max_length=120, blank=True)
    country = models.CharField(max_length=2, default="AR")
    latitude = models.DecimalField(max_digits=10, decimal_places=8, null=True, blank=True)
    longitude = models.DecimalField(max_digits=11, decimal_places=8, null=True, blank=True)
    price_from = models.DecimalField(max_digits=15, decimal_places=2, null=True, blank=True)
    price_to = models.DecimalField(max_digits=15, decimal_places=2, null=True, blank=True)
    currency = models.CharField(max_length=3, default="USD")
    priority = models.IntegerField(default=100)
    settings = models.JSONField(default=dict, blank=True)
    approval_status = models.CharField(
        max_length=20, choices=OfferApprovalStatus.choices, default=OfferApprovalStatus.APPROVED
    )
    submitted_at = models.DateTimeField(null=True, blank=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(
        USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    rejection_reason = models.TextField(blank=True)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "offers"
        ordering = ["priority", "name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "slug"], name="offers_tenant_slug_uniq"),
            models.CheckConstraint(
                condition=models.Q(price_from__isnull=True)
                | models.Q(price_to__isnull=True)
                | models.Q(price_from__lte=models.F("price_to")),
                name="offers_price_range_ordered",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class AdOfferMap(models.Model):
    """Routes a Meta ad to a tenant and (once known) an offer. One ad belongs to one tenant."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="ad_mappings")
    # NULL: the tenant is known but not the offer, so its leads wait in PENDING_MAPPING.
    offer = models.ForeignKey(
        Offer, null=True, blank=True, on_delete=models.SET_NULL, related_name="ad_mappings"
    )
    platform = models.CharField(max_length=16, choices=AdPlatform.choices, default=AdPlatform.META)
    ad_id = models.CharField(max_length=64)
    ad_name = models.CharField(max_length=300, blank=True)
    adset_id = models.CharField(max_length=64, blank=True)
    adset_name = models.CharField(max_length=300, blank=True)
    campaign_id = models.CharField(max_length=64, blank=True)
    campaign_name = models.CharField(max_length=300, blank=True)
    form_id = models.CharField(max_length=64, blank=True)
    is_active = models.BooleanField(default=True)
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "ad_offer_map"
        verbose_name = "ad mapping"
        constraints = [
            # The webhook's routing lookup; an ad id is globally unique (one ad, one tenant).
            models.UniqueConstraint(fields=["ad_id"], name="idx_ad_offer_map_ad_id"),
        ]

    def __str__(self) -> str:
        return f"ad {self.ad_id} → {self.offer_id or 'unmapped'}"


class Lead(TimestampedModel):
    """A person, keyed by phone in E.164. Global: not tenant-scoped; tenants see it via lead_offers."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    phone = models.CharField(max_length=20, unique=True, help_text="E.164, e.g. +5491122334455.")
    email = models.EmailField(blank=True)
    first_name = models.CharField(max_length=150, blank=True)
    last_name = models.CharField(max_length=150, blank=True)
    full_name = models.CharField(max_length=300, blank=True)
    opted_out = models.BooleanField(default=False)
    opted_out_at = models.DateTimeField(null=True, blank=True)
    opt_out_reason = models.TextField(blank=True)
    country_code = models.CharField(max_length=2, default="AR")
    language = models.CharField(max_length=8, default="es")
    first_contact_at = models.DateTimeField(null=True, blank=True)
    last_contact_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "leads"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(phone__regex=r"^\+[1-9][0-9]{6,14}$"), name="leads_phone_e164"
            ),
        ]

    def __str__(self) -> str:
        return self.full_name or self.phone


class LeadSource(models.Model):
    """Attribution: one row per Meta leadgen event. `(tenant, leadgen_id)` is the idempotency key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="sources")
    # Denormalised so every attribution query is scoped by tenant without a join.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="lead_sources", db_index=False)
    leadgen_id = models.CharField(max_length=64, null=True, blank=True)
    platform = models.CharField(max_length=16, default="META")
    ad_id = models.CharField(max_length=64, blank=True)
    adset_id = models.CharField(max_length=64, blank=True)
    campaign_id = models.CharField(max_length=64, blank=True)
    form_id = models.CharField(max_length=64, blank=True)
    form_data = models.JSONField(default=dict, blank=True)
    utm_source = models.CharField(max_length=200, blank=True)
    utm_medium = models.CharField(max_length=200, blank=True)
    utm_campaign = models.CharField(max_length=200, blank=True)
    utm_content = models.CharField(max_length=200, blank=True)
    utm_term = models.CharField(max_length=200, blank=True)
    attributed_cost = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "lead_sources"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "leadgen_id"],
                name="idx_lead_sources_unique_tenant_leadgen",
                condition=models.Q(leadgen_id__isnull=False),
            ),
        ]
        indexes = [
            # The guide's pattern `lead_sources WHERE leadgen_id` (inbox dedupe, support lookups).
            models.Index(
                fields=["leadgen_id"],
                name="idx_lead_sources_leadgen_id",
                condition=models.Q(leadgen_id__isnull=False),
            ),
            models.Index(fields=["tenant", "-created_at"], name="idx_lead_sources_tenant_created"),
            # Routing an ad's waiting leads when it gets mapped (and reprocessing its inbox changes).
            models.Index(
                fields=["tenant", "ad_id"], name="idx_lead_sources_tenant_ad", condition=~models.Q(ad_id="")
            ),
        ]

    def __str__(self) -> str:
        return f"{self.platform} {self.leadgen_id or self.pk}"


class LeadOfferQuerySet(TenantScopedQuerySet):
    def in_stage(self, stage_key: str) -> LeadOfferQuerySet:
        from leads.funnel import statuses_for_stage

        return self.filter(status__in=statuses_for_stage(stage_key))


class LeadOffer(TimestampedModel):
    """The funnel row: one lead for one tenant (and offer, once mapped). Every stat counts these."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed as the leading column of the (lead, offer, tenant) unique constraint.
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="lead_offers", db_index=False)
    # Indexed through idx_lead_offers_offer below (kept explicit to carry the guide's name).
    offer = models.ForeignKey(
        Offer, null=True, blank=True, on_delete=models.SET_NULL, related_name="lead_offers", db_index=False
    )
    # Indexed as the leading column of the tenant_* composite indexes.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="lead_offers", db_index=False)
    # Rarely traversed in this direction; a GDPR delete of a source is a one-off.
    lead_source = models.ForeignKey(
        LeadSource,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="lead_offers",
        db_index=False,
    )
    status = models.CharField(
        max_length=20, choices=LeadOfferStatus.choices, default=LeadOfferStatus.TO_BE_CONTACTED
    )
    # Maintained by the database trigger, whoever changes the status.
    previous_status = models.CharField(max_length=20, choices=LeadOfferStatus.choices, blank=True)
    status_changed_at = models.DateTimeField(default=timezone.now)
    qualification_fields = models.JSONField(default=dict, blank=True)
    score_total = models.PositiveSmallIntegerField(null=True, blank=True)
    score_breakdown = models.JSONField(default=dict, blank=True)
    scored_at = models.DateTimeField(null=True, blank=True)
    billing_eligibility = models.CharField(
        max_length=32, choices=BillingEligibility.choices, default=BillingEligibility.PENDING
    )
    billing_notes = models.TextField(blank=True)
    contact_attempts = models.PositiveSmallIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    reactivation_count = models.PositiveSmallIntegerField(default=0)
    first_response_at = models.DateTimeField(null=True, blank=True)
    # When the row first became LEAD_READY; set once by the trigger, never moved by later changes.
    qualified_at = models.DateTimeField(null=True, blank=True)
    disqualification_reason = models.TextField(blank=True)
    disqualification_category = models.CharField(
        max_length=32, choices=DisqualificationCategory.choices, blank=True
    )

    objects = LeadOfferQuerySet.as_manager()

    class Meta:
        db_table = "lead_offers"
        constraints = [
            models.UniqueConstraint(
                fields=["lead", "offer", "tenant"], name="lead_offers_lead_offer_tenant_uniq"
            ),
            # NULL offer ids never collide above: at most one unmapped row per lead and tenant.
            models.UniqueConstraint(
                fields=["tenant", "lead"],
                name="idx_lead_offers_unique_unmapped_per_tenant",
                condition=models.Q(offer__isnull=True),
            ),
            models.CheckConstraint(
                condition=models.Q(score_total__isnull=True) | models.Q(score_total__lte=100),
                name="lead_offers_score_range",
            ),
            choices_check("status", LeadOfferStatus, "lead_offers_status_valid"),
            choices_check("billing_eligibility", BillingEligibility, "lead_offers_billing_eligibility_valid"),
        ]
        indexes = [
            # Lead list by status, newest first; `id` breaks ties for keyset pagination.
            models.Index(
                "tenant",
                "status",
                models.F("updated_at").desc(),
                models.F("id").desc(),
                name="idx_lead_offers_tenant_status_updated",
            ),
            # Lead list without a status filter; same tie-breaker.
            models.Index(
                "tenant",
                models.F("updated_at").desc(),
                models.F("id").desc(),
                name="idx_lead_offers_tenant_updated",
            ),
            # Per-offer funnel counts within a tenant, index-only.
            models.Index(fields=["tenant", "status", "offer"], name="idx_lead_offers_tenant_status_offer"),
            models.Index(fields=["offer"], name="idx_lead_offers_offer"),
            # Rows created in a window (stats "leads_7d", the funnel's created_from/created_to), with
            # the columns those counts group by, so both are index-only.
            models.Index(
                fields=["tenant", "created_at"],
                include=["status", "offer"],
                name="idx_lead_offers_tenant_created",
            ),
            # Stats' disqualification breakdown: DISQUALIFIED rows by category, index-only.
            models.Index(
                fields=["tenant", "disqualification_category"],
                condition=models.Q(status="DISQUALIFIED"),
                name="idx_lead_offers_tenant_disqualified",
            ),
            # Admin revenue counts leads made ready by the instant of their first LEAD_READY
            # (`qualified_at`, set once by the status trigger), across tenants, index-only.
            models.Index(
                fields=["qualified_at"],
                include=["tenant", "offer"],
                condition=models.Q(qualified_at__isnull=False),
                name="idx_lead_offers_qualified_at",
            ),
            # Contact scheduler: only rows that still wait for an attempt.
            models.Index(
                fields=["next_attempt_at"],
                name="idx_lead_offers_next_attempt",
                condition=models.Q(next_attempt_at__isnull=False)
                & ~models.Q(status__in=["STOPPED", "DISQUALIFIED", "SENT_TO_DEVELOPER"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.pk} ({self.status})"


class LeadEvent(models.Model):
    """Append-only audit of a lead's lifecycle."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="events")
    # Indexed through idx_lead_events_lead_offer_created (timeline order).
    lead_offer = models.ForeignKey(
        LeadOffer, null=True, blank=True, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    # Indexed as the leading column of idx_lead_events_tenant_type_created.
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="lead_events", db_index=False
    )
    event_type = models.CharField(max_length=32, choices=LeadEventType.choices)
    details = models.JSONField(default=dict, blank=True)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices, default=ActorType.SYSTEM)
    actor_id = models.UUIDField(null=True, blank=True)
    # The request id of the request that caused it (X-Request-ID allows 128 characters).
    trace_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "lead_events"
        indexes = [
            models.Index(fields=["lead_offer", "created_at"], name="idx_lead_events_lead_offer_created"),
            # Revenue counts events (first ready, delivery completed) by tenant and day.
            models.Index(
                fields=["tenant", "event_type", "created_at"], name="idx_lead_events_tenant_type_created"
            ),
            # The same across all tenants.
            models.Index(fields=["event_type", "created_at"], name="idx_lead_events_type_created"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.created_at:%Y-%m-%d %H:%M}"


# --- lead_offer counters (leads/counters.py) -------------------------------------------------------------


class LeadOfferCount(models.Model):
    """A tenant's folded lead_offer count for one (status, DISQUALIFIED category): the exact count is
    this `n` plus the tenant's pending `LeadOfferCountDelta` rows, read in one statement.

    Written only by `leads.counters` (compaction, rebuild) and the migration's backfill; never by hand.
    """

    # ON CONFLICT folds deltas into this key; no synthetic id needed.
    pk = models.CompositePrimaryKey("tenant_id", "status", "disqualification_category")
    # No FK constraint: counters must never block (or be cascaded by) a tenant delete, which deletes
    # its lead_offers and so folds its counters to zero. Indexed as the primary key's first column.
    tenant = models.ForeignKey(
        Tenant, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    status = models.CharField(max_length=20, choices=LeadOfferStatus.choices)
    # The row's category when status is DISQUALIFIED, '' for every other status.
    disqualification_category = models.CharField(max_length=32, blank=True)
    n = models.BigIntegerField()

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "lead_offer_counts"

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.status}/{self.disqualification_category or '-'}: {self.n}"


class LeadOfferCountDelta(models.Model):
    """+1/-1 per lead_offer change, appended by the `lead_offer_counts_track` trigger (append-only:
    concurrent transactions never update a shared row), folded into `LeadOfferCount` by compaction."""

    id = models.BigAutoField(primary_key=True)
    # No FK constraint: a check per appended row would cost every lead_offer write a tenants probe.
    tenant = models.ForeignKey(
        Tenant, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    status = models.CharField(max_length=20, choices=LeadOfferStatus.choices)
    disqualification_category = models.CharField(max_length=32, blank=True)
    delta = models.IntegerField()

    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "lead_offer_count_deltas"
        indexes = [
            # The counter read sums a tenant's pending deltas.
            models.Index(fields=["tenant"], name="idx_lead_offer_deltas_tenant"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.status}/{self.disqualification_category or '-'}: {self.delta:+d}"


# --- Meta webhook inbox (decision D4) -------------------------------------------------------------------


class InboxEventStatus(models.TextChoices):
    PENDING = "PENDING"  # at least one change still waits for processing
    DONE = "DONE"  # every change processed (or recognised as a replay)
    PARKED = "PARKED"  # nothing pending, but some change is parked for staff (unrouted or failed)


class InboxChangeStatus(models.TextChoices):
    PENDING = "PENDING"  # waiting for (or being retried by) the processing job
    PROCESSED = "PROCESSED"  # a lead_offer was created or reused for it
    REPLAY = "REPLAY"  # the tenant already has this leadgen_id: nothing new was created
    UNROUTED = "UNROUTED"  # no active mapping for the ad (or no ad id): parked until one exists
    FAILED = "FAILED"  # a permanent error (Graph 4xx, page token missing or rejected, no usable phone,
    # retries exhausted): parked until staff reprocess it

    @classmethod
    def parked(cls) -> list[str]:
        return [cls.UNROUTED, cls.FAILED]


class InboxEvent(models.Model):
    """One signed POST from Meta, stored as received before anything else happens to it."""

    id = models.BigAutoField(primary_key=True)
    received_at = models.DateTimeField(default=timezone.now, editable=False)
    object = models.CharField(max_length=32, default="page")
    # The parsed body as Meta sent it (the signature was checked over its raw bytes).
    payload = models.JSONField()
    leadgen_ids = ArrayField(models.CharField(max_length=64), default=list)
    change_count = models.PositiveIntegerField(default=0)
    status = models.CharField(
        max_length=16, choices=InboxEventStatus.choices, default=InboxEventStatus.PENDING
    )
    # How many times a job picked the event up; the job's own retries count here too.
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    # The procrastinate job that holds the event: the drain processing it, or its own job waiting to
    # retry it. Drains skip an event whose holder is still queued or running (leads/ingestion.py).
    claimed_by_job = models.BigIntegerField(null=True, blank=True)

    class Meta:
        db_table = "webhook_inbox_events"
        verbose_name = "inbox event"
        constraints = [choices_check("status", InboxEventStatus, "webhook_inbox_events_status_valid")]
        indexes = [
            # Queue depth, the oldest pending age and the stale-event sweep read only pending rows.
            models.Index(
                fields=["received_at"],
                name="idx_inbox_events_pending",
                condition=models.Q(status="PENDING"),
            ),
        ]

    def __str__(self) -> str:
        return f"inbox event {self.pk} ({self.status}, {self.change_count} change(s))"


class InboxChange(models.Model):
    """One leadgen change of an inbox event: the unit that becomes (at most) one lead_offer."""

    id = models.BigAutoField(primary_key=True)
    event = models.ForeignKey(InboxEvent, on_delete=models.CASCADE, related_name="changes", db_index=False)
    position = models.PositiveIntegerField()
    leadgen_id = models.CharField(max_length=64)
    page_id = models.CharField(max_length=64, blank=True)
    form_id = models.CharField(max_length=64, blank=True)
    ad_id = models.CharField(max_length=64, blank=True)
    adgroup_id = models.CharField(max_length=64, blank=True)
    # Meta's `created_time` (when the person submitted the form).
    submitted_at = models.DateTimeField(null=True, blank=True)
    value = models.JSONField(default=dict)
    status = models.CharField(
        max_length=16, choices=InboxChangeStatus.choices, default=InboxChangeStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    lead_offer = models.ForeignKey(
        LeadOffer, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    processed_at = models.DateTimeField(null=True, blank=True)

    # The tenant is known once the change is routed; staff views filter by it.
    objects = TenantScopedQuerySet.as_manager()

    class Meta:
        db_table = "webhook_inbox_changes"
        verbose_name = "inbox change"
        constraints = [
            models.UniqueConstraint(
                fields=["event", "position"], name="webhook_inbox_changes_event_position"
            ),
            choices_check("status", InboxChangeStatus, "webhook_inbox_changes_status_valid"),
        ]
        indexes = [
            # Support and admin lookups by Meta's id.
            models.Index(fields=["leadgen_id"], name="idx_inbox_changes_leadgen_id"),
            # A tenant's inbox in the admin (and the FK's delete path).
            models.Index(fields=["tenant", "-created_at"], name="idx_inbox_changes_tenant_created"),
            # The admin's "needs attention" list, and an ad's unrouted changes once it gets mapped.
            models.Index(
                fields=["ad_id", "created_at"],
                name="idx_inbox_changes_parked",
                condition=models.Q(status__in=["UNROUTED", "FAILED"]),
            ),
        ]

    def __str__(self) -> str:
        return f"leadgen {self.leadgen_id} ({self.status})"
