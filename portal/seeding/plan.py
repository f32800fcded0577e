"""The shape of a demo dataset, decided before any row is written: tenants, offers, ads, people.

Everything here is derived from the seed with private `random.Random` streams, so the same seed
gives the same tenants, ids and phones whatever the date. Times are Unix microseconds relative to
the run's `now_us` (ages, not dates), which keeps the data recent on every run.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from django.utils.text import slugify

from portal.seeding import binary as b
from portal.seeding import words

MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US
MONTH_US = int(30.44 * DAY_US)

# Unmapped ads are recent: their leads wait in PENDING_MAPPING until someone maps the ad.
UNMAPPED_WINDOW_US = 45 * DAY_US

STAFF_EMAIL = "staff@converzia.demo"
DEMO_EMAIL_SUFFIX = ".demo"


def stream(seed: int, name: str) -> random.Random:
    """An independent, reproducible random stream per concern (adding rows to one never shifts another)."""
    return random.Random(f"converzia-demo:{seed}:{name}")


def uuid4_from(rnd: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rnd.getrandbits(128), version=4)


def log_uniform(rnd: random.Random, low: float, high: float) -> int:
    return int(low * (high / low) ** rnd.random())


@dataclass
class SeedConfig:
    tenants: int
    leads: int
    whale: int
    seed: int
    months: int
    now_us: int

    @property
    def start_us(self) -> int:
        return self.now_us - self.months * MONTH_US

    @property
    def pending_tenants(self) -> int:
        # A few self-registered tenants wait for approval, so the admin has something to approve.
        if self.tenants < 4:
            return 0
        return max(1, round(self.tenants * 0.02))

    @property
    def active_tenants(self) -> int:
        return self.tenants - self.pending_tenants


@dataclass
class OfferPlan:
    id: uuid.UUID
    name: str
    slug: str
    city: str
    zone: str
    status: str
    price_from: Decimal
    price_to: Decimal
    created_us: int


@dataclass
class AdPlan:
    id: uuid.UUID
    ad_id: str
    adset_id: str
    campaign_id: str
    form_id: str
    ad_name: str
    adset_name: str
    campaign_name: str
    offer: OfferPlan | None
    created_us: int
    cost_per_lead: Decimal
    # Pre-encoded COPY pieces, so the hot loop only concatenates.
    offer_field: bytes = b""
    source_block: bytes = b""
    created_event: bytes = b""
    # Leads per calendar month (index into the run's month list), for platform_costs.
    month_counts: list[int] = field(default_factory=list)


@dataclass
class MemberPlan:
    user_id: uuid.UUID
    email: str
    full_name: str
    role: str


@dataclass
class TenantPlan:
    index: int
    id: uuid.UUID
    name: str
    slug: str
    status: str
    timezone: str
    created_us: int
    activated_us: int | None
    join_us: int
    weight: float
    members: list[MemberPlan] = field(default_factory=list)
    offers: list[OfferPlan] = field(default_factory=list)
    ads: list[AdPlan] = field(default_factory=list)
    unmapped_ads: list[AdPlan] = field(default_factory=list)
    ad_wheel: list[AdPlan] = field(default_factory=list)
    destination_id: uuid.UUID | None = None
    destination_url: str = ""
    destination_disabled_us: int | None = None
    cost_per_lead: Decimal = Decimal("10.00")
    id_field: bytes = b""
    destination_field: bytes = b.NULL
    destination_url_field: bytes = b""
    # Filled while generating: (time, delivery id, lead_offer id) of each charge and refund.
    charges: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    refunds: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    lead_offers: int = 0

    @property
    def owner(self) -> MemberPlan:
        return self.members[0]


@dataclass
class DatasetPlan:
    config: SeedConfig
    staff_id: uuid.UUID
    tenants: list[TenantPlan]
    whale: TenantPlan | None
    # Tenants that receive the non-whale leads, in join order, with cumulative weights.
    pool: list[TenantPlan]
    pool_joins: list[int]
    pool_cumulative: list[float]
    # Start of each calendar month (UTC) the data spans, as Unix µs; the first is the data's start.
    month_starts: list[int]


def _month_starts(start_us: int, now_us: int) -> list[int]:
    import datetime as dt

    start = dt.datetime.fromtimestamp(start_us / 1e6, tz=dt.UTC)
    starts = [start_us]
    year, month = start.year, start.month
    while True:
        month += 1
        if month == 13:
            year, month = year + 1, 1
        boundary = int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp() * 1_000_000)
        if boundary >= now_us:
            return starts
        starts.append(boundary)


def _tenant_names(rnd: random.Random, count: int) -> list[str]:
    pairs = [f"{a} {c}" for a in words.TENANT_FIRST for c in words.TENANT_SECOND]
    rnd.shuffle(pairs)
    names = []
    for i in range(count):
        base = pairs[i % len(pairs)]
        names.append(base if i < len(pairs) else f"{base} {i // len(pairs) + 1}")
    return names


def _tenant_timeline(rnd: random.Random, config: SeedConfig) -> tuple[list[int], list[int]]:
    """When each active tenant signed up and started receiving leads, in tenant order.

    The first tenant (the whale, when there is one) and the second start with the data, about half
    the others too, the rest join over time (not in the last 3 weeks). Sign-ups are strictly
    increasing in tenant order, so "the first tenants" (by `created_at`) are the first printed.
    """
    start, now = config.start_us, config.now_us
    n = config.active_tenants
    joins = sorted(
        start
        if index <= 1 or rnd.random() < 0.55
        else start + int(rnd.random() * max(1, now - 21 * DAY_US - start))
        for index in range(n)
    )
    at_start = sum(1 for join in joins if join == start)
    creations: list[int] = []
    for index, join in enumerate(joins):
        if index < at_start:
            created = start - 2 * DAY_US - (at_start - index) * 18 * HOUR_US + int(rnd.random() * HOUR_US)
        else:
            created = max(join - log_uniform(rnd, 2 * DAY_US, 20 * DAY_US), creations[-1] + MINUTE_US)
            if created > join - HOUR_US:
                created = (creations[-1] + join - HOUR_US) // 2
        creations.append(created)
    return joins, creations


def plan_dataset(config: SeedConfig) -> DatasetPlan:
    rnd = stream(config.seed, "tenants")
    start, now = config.start_us, config.now_us
    staff_id = uuid4_from(rnd)
    names = _tenant_names(rnd, config.tenants)
    month_starts = _month_starts(start, now)
    tz_wheel = [zone for zone, weight in words.TIMEZONES for _ in range(weight)]
    joins, creations = _tenant_timeline(rnd, config)
    ad_counter = 0
    tenants: list[TenantPlan] = []
    used_slugs: set[str] = set()
    for index in range(config.tenants):
        name = names[index]
        slug = slugify(name) or f"tenant-{index}"
        while slug in used_slugs:
            slug = f"{slug}-{index}"
        used_slugs.add(slug)
        active = index < config.active_tenants
        tenant_id = uuid4_from(rnd)
        if not active:
            # Registered over the last days, in tenant order.
            created = now - (config.tenants - index) * DAY_US + int(rnd.random() * HOUR_US)
            plan = TenantPlan(
                index=index,
                id=tenant_id,
                name=name,
                slug=slug,
                status="PENDING",
                timezone=tz_wheel[rnd.randrange(len(tz_wheel))],
                created_us=created,
                activated_us=None,
                join_us=now,
                weight=0.0,
            )
        else:
            join, created = joins[index], creations[index]
            activated = created + int(rnd.random() * (join - created) * 0.5) + MINUTE_US
            plan = TenantPlan(
                index=index,
                id=tenant_id,
                name=name,
                slug=slug,
                status="ACTIVE",
                timezone=tz_wheel[rnd.randrange(len(tz_wheel))],
                created_us=created,
                activated_us=activated,
                join_us=join,
                # Pareto: a few big tenants, a long tail of small ones.
                weight=min(rnd.paretovariate(1.16), 60.0),
                cost_per_lead=Decimal(rnd.choice(("8.00", "10.00", "10.00", "12.00", "15.00", "18.00"))),
            )
        plan.id_field = b.uuid_field(tenant_id.bytes)
        plan.members.append(
            MemberPlan(uuid4_from(rnd), f"owner@{slug}{DEMO_EMAIL_SUFFIX}", f"Owner {name}", "OWNER")
        )
        if active:
            for role, share in (("ADMIN", 0.4), ("VIEWER", 0.25), ("BILLING", 0.1)):
                if rnd.random() < share:
                    email = f"{role.lower()}@{slug}{DEMO_EMAIL_SUFFIX}"
                    plan.members.append(MemberPlan(uuid4_from(rnd), email, f"{role.title()} {name}", role))
            ad_counter = _plan_offers_and_ads(plan, rnd, config, ad_counter, len(month_starts))
            plan.destination_id = uuid4_from(rnd)
            plan.destination_url = f"https://hooks.{slug}.example/converzia/leads"
            plan.destination_field = b.uuid_field(plan.destination_id.bytes)
            plan.destination_url_field = b.text(plan.destination_url)
            # A few tenants switched their destination off lately: their newest ready leads wait.
            if index >= 2 and rnd.random() < 0.05:
                plan.destination_disabled_us = now - log_uniform(rnd, 3 * DAY_US, 40 * DAY_US)
        tenants.append(plan)

    whale = tenants[0] if config.whale > 0 else None
    pool = [t for t in tenants if t.status == "ACTIVE" and t is not whale]
    pool.sort(key=lambda t: (t.join_us, t.index))
    cumulative, total = [], 0.0
    for tenant in pool:
        total += tenant.weight
        cumulative.append(total)
    return DatasetPlan(
        config=config,
        staff_id=staff_id,
        tenants=tenants,
        whale=whale,
        pool=pool,
        pool_joins=[t.join_us for t in pool],
        pool_cumulative=cumulative,
        month_starts=month_starts,
    )


def _plan_offers_and_ads(
    tenant: TenantPlan, rnd: random.Random, config: SeedConfig, ad_counter: int, months: int
) -> int:
    if tenant.index == 0 and config.whale > 0:
        n_offers = 10
    else:
        n_offers = max(1, min(8, int(1 + math.log2(1 + tenant.weight) * 1.5 + rnd.random() * 2)))
    slugs: set[str] = set()
    for _ in range(n_offers):
        kind = rnd.choice(words.OFFER_KINDS)
        zone, city = rnd.choice(words.OFFER_PLACES)
        name = f"{kind} {zone}"
        slug = slugify(name)
        while slug in slugs:
            slug = f"{slugify(name)}-{len(slugs) + 1}"
        slugs.add(slug)
        price_from = Decimal(rnd.randrange(60, 400) * 1000)
        status = "ACTIVE" if rnd.random() < 0.85 else rnd.choice(("PAUSED", "ARCHIVED"))
        tenant.offers.append(
            OfferPlan(
                id=uuid4_from(rnd),
                name=name,
                slug=slug,
                city=city,
                zone=zone,
                status=status,
                price_from=price_from,
                price_to=price_from + Decimal(rnd.randrange(20, 300) * 1000),
                created_us=tenant.join_us - log_uniform(rnd, HOUR_US, 3 * DAY_US),
            )
        )
    for offer in tenant.offers:
        for _ in range(rnd.randint(1, 3)):
            ad_counter += 1
            ad = _ad(tenant, rnd, config, ad_counter, offer, offer.created_us, months)
            tenant.ads.append(ad)
            tenant.ad_wheel.extend([ad] * rnd.randint(1, 5))
    if (tenant.index == 0 and config.whale > 0) or rnd.random() < 0.25:
        ad_counter += 1
        created = config.now_us - UNMAPPED_WINDOW_US
        tenant.unmapped_ads.append(_ad(tenant, rnd, config, ad_counter, None, created, months))
    return ad_counter


def _ad(
    tenant: TenantPlan,
    rnd: random.Random,
    config: SeedConfig,
    counter: int,
    offer: OfferPlan | None,
    created_us: int,
    months: int,
) -> AdPlan:
    # Meta-looking 18-digit ids; a per-seed block keeps two seeds' ids apart.
    base = 120_200_000_000_000_000 + (config.seed % 1000) * 1_000_000_000
    ad_id = str(base + counter * 3)
    label = offer.name if offer else "Campaña sin asignar"
    ad = AdPlan(
        id=uuid4_from(rnd),
        ad_id=ad_id,
        adset_id=str(base + counter * 3 + 1),
        campaign_id=str(base + counter * 3 + 2),
        form_id=str(900_000_000_000_000 + counter),
        ad_name=f"{label} - anuncio {counter}",
        adset_name=f"{label} - conjunto",
        campaign_name=f"{tenant.name} - {label}",
        offer=offer,
        created_us=created_us,
        cost_per_lead=Decimal(rnd.randrange(250, 1400)) / 100,
        month_counts=[0] * months,
    )
    ad.offer_field = b.uuid_field(offer.id.bytes) if offer else b.NULL
    ad.source_block = b"".join(
        (
            b.text("META"),
            b.text(ad.ad_id),
            b.text(ad.adset_id),
            b.text(ad.campaign_id),
            b.text(ad.form_id),
            b.jsonb({}),
            b.text("facebook"),
            b.text("paid_social"),
            b.text(slugify(ad.campaign_name)[:200]),
            b.text(""),
            b.text(""),
            b.numeric(ad.cost_per_lead),
        )
    )
    ad.created_event = b"".join(
        (
            b.text("CREATED"),
            b.jsonb({"source": "META", "ad_id": ad.ad_id, "form_id": ad.form_id}),
            b.text("SYSTEM"),
            b.NULL,
            b.text(""),
        )
    )
    return ad
