"""Seeding a whole demo dataset in one transaction, and re-issuing its logins afterwards."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gc
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from django.contrib.auth.hashers import make_password
from django.db import connection, transaction
from django.utils import timezone

from billing.models import BillingOrder, PlatformCost, TenantCreditBalance, TenantPricing, default_packages
from converzia.models import ApiToken, Tenant, TenantMember, User
from deliveries.models import DeliveryDestination
from leads.counters import lead_offer_counts_rebuild
from leads.models import AdOfferMap, Lead, Offer
from portal.seeding import binary as b
from portal.seeding.generator import STATUSES, Generator
from portal.seeding.indexes import indexes_drop, indexes_rebuild
from portal.seeding.ledger import LEDGER_COLUMNS, PACKAGES, assign_order_numbers, ledger_build
from portal.seeding.plan import (
    DAY_US,
    DEMO_EMAIL_SUFFIX,
    HOUR_US,
    STAFF_EMAIL,
    DatasetPlan,
    SeedConfig,
    log_uniform,
    plan_dataset,
    stream,
)

MAX_LEADS = 20_000_000
MAX_TENANTS = 10_000
TOKEN_NAME = "seed_demo"

# Tables loaded by COPY: their secondary indexes are rebuilt once at the end of the load.
BULK_TABLES = [
    "leads",
    "lead_sources",
    "lead_offers",
    "lead_events",
    "deliveries",
    "delivery_attempts",
    "credit_ledger",
]
# Not loaded, but they reference bulk tables, so TRUNCATE (which COPY FREEZE needs) must include them;
# the seeder only runs on a database without tenants or leads, where they are empty too.
REFERENCING_TABLES = ["webhook_inbox_changes", "credit_alerts"]
ANALYZE_TABLES = [
    "users",
    "api_tokens",
    "tenants",
    "tenant_members",
    "tenant_pricing",
    "offers",
    "ad_offer_map",
    "delivery_destinations",
    "billing_orders",
    "tenant_credit_balances",
    "platform_costs",
    *BULK_TABLES,
]


class SeedError(Exception):
    """Bad options, or a database the seeder must not write into. The message says which."""


def seed_config(*, tenants: int, leads: int, whale: int, seed: int, months: int) -> SeedConfig:
    """Validate the options; raises `SeedError` with a message meant for the person who typed them."""
    if tenants < 1:
        raise SeedError(f"--tenants must be at least 1 (got {tenants}).")
    if tenants > MAX_TENANTS:
        raise SeedError(f"--tenants is at most {MAX_TENANTS:,} (got {tenants:,}).")
    if leads < 0:
        raise SeedError(f"--leads cannot be negative (got {leads}).")
    if leads > MAX_LEADS:
        raise SeedError(f"--leads is at most {MAX_LEADS:,} (got {leads:,}).")
    if whale < 0:
        raise SeedError(f"--whale cannot be negative (got {whale}).")
    if whale > leads:
        raise SeedError(f"--whale ({whale:,}) cannot exceed --leads ({leads:,}).")
    if whale and tenants < 2:
        raise SeedError("--whale needs at least 2 tenants: the whale plus the tenants sharing the rest.")
    if not 1 <= months <= 120:
        raise SeedError(f"--months must be between 1 and 120 (got {months}).")
    now_us = time.time_ns() // 1000
    return SeedConfig(tenants=tenants, leads=leads, whale=whale, seed=seed, months=months, now_us=now_us)


def database_is_empty() -> bool:
    return not Tenant.objects.exists() and not Lead.objects.exists()


@dataclass
class Login:
    email: str
    password: str
    api_token: str

    def as_dict(self) -> dict[str, str]:
        return {"email": self.email, "password": self.password, "api_token": self.api_token}


@dataclass
class SeedReport:
    credentials: dict[str, Any]
    rows: dict[str, int]
    status_counts: dict[str, int]
    seconds_load: float = 0.0
    seconds_total: float = 0.0
    fk_checks_skipped: bool = False
    frozen: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def _us_to_dt(value: int | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value / 1e6, tz=dt.UTC)


def _issue_token(user_id: uuid.UUID, created: dt.datetime) -> tuple[ApiToken, str]:
    raw = ApiToken.generate()
    token = ApiToken(
        user_id=user_id,
        name=TOKEN_NAME,
        key_prefix=raw[:12],
        key_digest=ApiToken.digest(raw),
        created_at=created,
    )
    return token, raw


def _set_local(cursor: Any, values: dict[str, str]) -> dict[str, str]:
    """SET LOCAL each setting; returns the previous values, for `_set_local` to restore."""
    previous = {}
    for name, value in values.items():
        cursor.execute("SELECT current_setting(%s)", [name])
        previous[name] = cursor.fetchone()[0]
        cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
    return previous


def _skip_fk_checks(cursor: Any) -> bool:
    """Turn off foreign-key triggers for this transaction, when allowed (superuser only).

    Every reference is consistent by construction (the tests check it); per-row deferred checks
    would otherwise queue ~20M trigger events at the bench size and run them at commit.
    """
    try:
        with transaction.atomic():
            cursor.execute("SET LOCAL session_replication_role = replica")
        return True
    except psycopg.Error:
        return False


def _truncate_for_freeze(cursor: Any) -> bool:
    """Truncate the (empty) bulk tables in this transaction, which is what allows COPY FREEZE.

    Only when they are all empty, and without CASCADE: if another table references one of them,
    TRUNCATE fails and the load simply goes without FREEZE.
    """
    tables = [*BULK_TABLES, *REFERENCING_TABLES]
    for table in tables:
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {table})")
        if cursor.fetchone()[0]:
            return False
    try:
        with transaction.atomic():
            cursor.execute(f"TRUNCATE {', '.join(tables)}")
        return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def _gc_paused() -> Any:
    # The loop allocates millions of short-lived tuples and no cycles; collections only cost time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def seed_demo(
    config: SeedConfig,
    *,
    progress: Callable[[int], None] = lambda n: None,
    log: Callable[[str], None] = lambda message: None,
) -> SeedReport:
    """Write the whole dataset in one transaction (ANALYZE and the stats refresh are the caller's).

    Raises `SeedError` when the database already holds tenants or leads.
    """
    started = time.monotonic()
    if not database_is_empty():
        raise SeedError(
            "The database already has data (tenants or leads). seed_demo only fills an empty database: "
            "use --if-empty to skip seeding when data exists, or start from a fresh database."
        )
    plan = plan_dataset(config)
    owner_password = "demo-" + secrets.token_urlsafe(9)
    staff_password = "staff-" + secrets.token_urlsafe(9)
    report = SeedReport(credentials={}, rows={}, status_counts={})
    timings = report.timings

    with transaction.atomic():
        connection.ensure_connection()
        pg = connection.connection
        with pg.cursor() as cursor:
            previous = _set_local(
                cursor,
                {
                    # The load and the index builds are long statements by design.
                    "statement_timeout": "0",
                    "lock_timeout": "30s",
                    "maintenance_work_mem": "512MB",
                },
            )
            report.fk_checks_skipped = _skip_fk_checks(cursor)
            report.frozen = _truncate_for_freeze(cursor)

            step = time.monotonic()
            report.credentials = _small_tables(plan, owner_password, staff_password)
            timings["small tables"] = time.monotonic() - step

            step = time.monotonic()
            deferred = indexes_drop(cursor, BULK_TABLES)
            generator_ = None
            with _gc_paused(), b.CopyPump(pg, freeze=report.frozen) as pump:
                generator_ = Generator(plan, pump, progress)
                generator_.run()
            report.rows.update(pump.rows)
            timings["bulk load"] = time.monotonic() - step

            step = time.monotonic()
            with _gc_paused():
                _ledger_and_orders(plan, cursor, report)
            _platform_costs(plan, report)
            _timestamps_fix(cursor, plan)
            timings["ledger and costs"] = time.monotonic() - step
            report.seconds_load = time.monotonic() - started

            if not report.fk_checks_skipped:
                # Queued (deferred) foreign-key checks block CREATE INDEX on their tables: run
                # them now, then put Django's constraints back to their usual deferred mode.
                step = time.monotonic()
                log("checking foreign keys ...")
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
                timings["foreign key checks"] = time.monotonic() - step

            step = time.monotonic()
            log(f"rebuilding {len(deferred)} indexes ...")
            indexes_rebuild(cursor, deferred)
            timings["index rebuild"] = time.monotonic() - step

            # COPY under session_replication_role = replica fired no counter triggers.
            step = time.monotonic()
            lead_offer_counts_rebuild()
            timings["lead_offer counters"] = time.monotonic() - step

            if report.fk_checks_skipped:
                cursor.execute("SET LOCAL session_replication_role = origin")
            _set_local(cursor, previous)

    report.status_counts = {
        status: count for status, count in zip(STATUSES, generator_.status_counts, strict=True) if count
    }
    report.seconds_total = time.monotonic() - started
    return report


def analyze() -> float:
    """ANALYZE the seeded tables (fresh statistics for the planner); returns the seconds it took."""
    started = time.monotonic()
    with transaction.atomic(), connection.cursor() as cursor:
        # Sampling millions of rows can outlast a request-sized statement timeout.
        cursor.execute("SET LOCAL statement_timeout = 0")
        cursor.execute(f"ANALYZE {', '.join(ANALYZE_TABLES)}")
    return time.monotonic() - started


# --- small tables (ORM) -------------------------------------------------------------------------


def _small_tables(plan: DatasetPlan, owner_password: str, staff_password: str) -> dict[str, Any]:
    """Users, tokens, tenants, members, pricing, offers, ads and destinations; returns the logins."""
    config = plan.config
    rnd = stream(config.seed, "small-tables")
    now = timezone.now()
    # Hashing is deliberately slow: once per distinct password, shared by every demo member.
    owner_hash = make_password(owner_password)
    staff_hash = make_password(staff_password)
    earliest = min((t.created_us for t in plan.tenants), default=config.start_us)

    users = [
        User(
            id=plan.staff_id,
            email=STAFF_EMAIL,
            full_name="Converzia Staff",
            password=staff_hash,
            is_staff=True,
            is_superuser=True,
            date_joined=_us_to_dt(earliest - 30 * DAY_US),
        )
    ]
    tokens: list[ApiToken] = []
    staff_token, staff_raw = _issue_token(plan.staff_id, now)
    tokens.append(staff_token)
    credentials: dict[str, Any] = {
        "staff": Login(STAFF_EMAIL, staff_password, staff_raw).as_dict(),
        "tenants": [],
    }
    tenants, members, pricing, offers, ads, destinations = [], [], [], [], [], []
    for plan_tenant in plan.tenants:
        active = plan_tenant.status == "ACTIVE"
        created = _us_to_dt(plan_tenant.created_us)
        activated = _us_to_dt(plan_tenant.activated_us)
        owner = plan_tenant.owner
        tenants.append(
            Tenant(
                id=plan_tenant.id,
                name=plan_tenant.name,
                slug=plan_tenant.slug,
                status=plan_tenant.status,
                timezone=plan_tenant.timezone,
                contact_email=owner.email,
                website=f"https://{plan_tenant.slug}.example",
                description=f"{plan_tenant.name}: desarrollos inmobiliarios (datos de demostración).",
                activated_at=activated,
                trial_credits_granted=active,
                trial_credits_amount=5 if active else 0,
                trial_granted_at=activated,
                trial_granted_by_id=plan.staff_id if active else None,
                created_at=created,
            )
        )
        for position, member in enumerate(plan_tenant.members):
            joined = plan_tenant.created_us + position * log_uniform(rnd, HOUR_US, 30 * DAY_US)
            users.append(
                User(
                    id=member.user_id,
                    email=member.email,
                    full_name=member.full_name,
                    password=owner_hash,
                    date_joined=_us_to_dt(joined),
                )
            )
            members.append(
                TenantMember(
                    id=uuid.UUID(int=rnd.getrandbits(128), version=4),
                    tenant_id=plan_tenant.id,
                    user_id=member.user_id,
                    role=member.role,
                    status="ACTIVE" if active else "PENDING_APPROVAL",
                    invited_by_id=owner.user_id if position else None,
                    approved_by_id=plan.staff_id if active and position == 0 else None,
                    approved_at=activated if active and position == 0 else None,
                    created_at=_us_to_dt(joined),
                )
            )
        token, raw = _issue_token(owner.user_id, now)
        tokens.append(token)
        credentials["tenants"].append(
            {
                "id": str(plan_tenant.id),
                "slug": plan_tenant.slug,
                "name": plan_tenant.name,
                "status": plan_tenant.status,
                "owner": Login(owner.email, owner_password, raw).as_dict(),
            }
        )
        if not active:
            continue
        packages = default_packages()
        if plan.whale is plan_tenant:
            packages += [
                {"id": name.lower(), "name": name, "credits": credits, "price": int(price)}
                for name, credits, price in PACKAGES[3:]
            ]
        pricing.append(
            TenantPricing(
                id=uuid.UUID(int=rnd.getrandbits(128), version=4),
                tenant_id=plan_tenant.id,
                cost_per_lead=plan_tenant.cost_per_lead,
                packages=packages,
                created_at=activated,
            )
        )
        for offer in plan_tenant.offers:
            offers.append(
                Offer(
                    id=offer.id,
                    tenant_id=plan_tenant.id,
                    name=offer.name,
                    slug=offer.slug,
                    status=offer.status,
                    short_description=f"{offer.name}, {offer.city}.",
                    city=offer.city,
                    zone=offer.zone,
                    price_from=offer.price_from,
                    price_to=offer.price_to,
                    approved_at=_us_to_dt(offer.created_us),
                    approved_by_id=plan.staff_id,
                    created_at=_us_to_dt(offer.created_us),
                )
            )
        for ad in plan_tenant.ads + plan_tenant.unmapped_ads:
            ads.append(
                AdOfferMap(
                    id=ad.id,
                    tenant_id=plan_tenant.id,
                    offer_id=ad.offer.id if ad.offer else None,
                    ad_id=ad.ad_id,
                    ad_name=ad.ad_name,
                    adset_id=ad.adset_id,
                    adset_name=ad.adset_name,
                    campaign_id=ad.campaign_id,
                    campaign_name=ad.campaign_name,
                    form_id=ad.form_id,
                    notes="" if ad.offer else "Anuncio nuevo: falta asignarle una oferta.",
                    created_at=_us_to_dt(ad.created_us),
                    created_by_id=owner.user_id,
                )
            )
        disabled = plan_tenant.destination_disabled_us
        destinations.append(
            DeliveryDestination(
                id=plan_tenant.destination_id,
                tenant_id=plan_tenant.id,
                url=plan_tenant.destination_url,
                secret="whsec_" + base64.b64encode(rnd.getrandbits(256).to_bytes(32, "big")).decode(),
                is_active=disabled is None,
                disabled_at=_us_to_dt(disabled),
                disabled_reason="" if disabled is None else "Disabled by the tenant.",
                created_at=_us_to_dt(plan_tenant.join_us - HOUR_US),
            )
        )

    User.objects.bulk_create(users, batch_size=2000)
    ApiToken.objects.bulk_create(tokens, batch_size=2000)
    Tenant.objects.bulk_create(tenants, batch_size=2000)
    TenantMember.objects.bulk_create(members, batch_size=2000)
    TenantPricing.objects.bulk_create(pricing, batch_size=2000)
    Offer.objects.bulk_create(offers, batch_size=2000)
    AdOfferMap.objects.bulk_create(ads, batch_size=2000)
    DeliveryDestination.objects.bulk_create(destinations, batch_size=2000)
    return credentials


def _timestamps_fix(cursor: Any, plan: DatasetPlan) -> None:
    """`auto_now` stamped the ORM-created rows with today; give them their story's times instead."""
    cursor.execute("UPDATE tenants SET updated_at = coalesce(activated_at, created_at)")
    for table in ("tenant_members", "tenant_pricing", "offers", "ad_offer_map", "delivery_destinations"):
        cursor.execute(f"UPDATE {table} SET updated_at = created_at")
    cursor.execute("UPDATE billing_orders SET updated_at = paid_at")
    # The last successful delivery per destination.
    cursor.execute(
        """
        UPDATE delivery_destinations d SET last_success_at = x.last_at
        FROM (SELECT destination_id, max(delivered_at) AS last_at FROM deliveries
              WHERE delivered_at IS NOT NULL GROUP BY destination_id) x
        WHERE d.id = x.destination_id
        """
    )


# --- ledger, orders, balances ------------------------------------------------------------------


def _ledger_and_orders(plan: DatasetPlan, cursor: Any, report: SeedReport) -> None:
    result = ledger_build(plan)
    numbers: list[int] = []
    if result.purchases:
        # Numbers from the app's own sequence, so later real orders never collide with these.
        cursor.execute(
            "SELECT nextval('billing_order_number_seq') FROM generate_series(1, %s)", [len(result.purchases)]
        )
        numbers = sorted(row[0] for row in cursor.fetchall())
    assign_order_numbers(result.purchases, numbers)
    orders = []
    for purchase in result.purchases:
        name, credits, price = purchase.package
        paid = _us_to_dt(purchase.paid_us)
        orders.append(
            BillingOrder(
                id=purchase.order_id,
                tenant_id=purchase.tenant.id,
                order_number=purchase.order_number,
                package_name=name,
                credits_purchased=credits,
                subtotal=price,
                total=price,
                status="completed",
                payment_reference=f"demo-{purchase.order_id.hex[:16]}",
                paid_at=paid,
                created_by_id=purchase.tenant.owner.user_id,
                created_at=paid - dt.timedelta(minutes=3),
            )
        )
    BillingOrder.objects.bulk_create(orders, batch_size=2000)
    _copy(cursor, "credit_ledger", LEDGER_COLUMNS, result.rows, freeze=report.frozen)
    TenantCreditBalance.objects.bulk_create(
        [
            TenantCreditBalance(
                tenant_id=balance.tenant_id,
                balance=balance.balance,
                total_purchased=balance.purchased,
                total_consumed=balance.consumed,
                total_refunded=balance.refunded,
                total_bonus=balance.bonus,
                total_adjusted=0,
            )
            for balance in result.balances
        ],
        batch_size=2000,
    )
    report.rows["billing_orders"] = len(orders)
    report.rows["credit_ledger"] = len(result.rows)
    report.rows["tenant_credit_balances"] = len(result.balances)


def _copy(cursor: Any, table: str, columns: tuple[str, ...], rows: list[bytes], *, freeze: bool) -> None:
    if not rows:
        return
    options = "FORMAT BINARY, FREEZE" if freeze else "FORMAT BINARY"
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN ({options})") as copy:
        copy.write(b.SIGNATURE)
        copy.write(memoryview(b"".join(rows)))
        copy.write(b.TRAILER)


def _platform_costs(plan: DatasetPlan, report: SeedReport) -> None:
    """Monthly ad spend per ad, consistent with the leads it brought (spend = leads × cost per lead)."""
    rnd = stream(plan.config.seed, "platform-costs")
    now = plan.config.now_us
    today = _us_to_dt(now).date()
    starts = plan.month_starts
    costs = []
    for tenant in plan.tenants:
        for ad in tenant.ads + tenant.unmapped_ads:
            for month, count in enumerate(ad.month_counts):
                if not count:
                    continue
                first = max(starts[month], ad.created_us)
                end_us = starts[month + 1] - 1 if month + 1 < len(starts) else now
                date_start, date_end = _us_to_dt(first).date(), min(_us_to_dt(end_us).date(), today)
                costs.append(
                    PlatformCost(
                        id=uuid.UUID(int=rnd.getrandbits(128), version=4),
                        tenant_id=tenant.id,
                        offer_id=ad.offer.id if ad.offer else None,
                        campaign_id=ad.campaign_id,
                        campaign_name=ad.campaign_name,
                        adset_id=ad.adset_id,
                        adset_name=ad.adset_name,
                        ad_id=ad.ad_id,
                        ad_name=ad.ad_name,
                        spend=(ad.cost_per_lead * count).quantize(Decimal("0.01")),
                        impressions=count * rnd.randint(150, 600),
                        clicks=count * rnd.randint(5, 20),
                        leads_raw=count,
                        date_start=date_start,
                        date_end=date_end,
                        synced_at=min(_us_to_dt(end_us + DAY_US), _us_to_dt(now)),
                    )
                )
    PlatformCost.objects.bulk_create(costs, batch_size=5000)
    report.rows["platform_costs"] = len(costs)


# --- logins for an existing demo database --------------------------------------------------------


def demo_credentials_reissue(*, tenants_limit: int = 3) -> dict[str, Any] | None:
    """Fresh passwords and API tokens for the demo staff user and the first demo tenants' owners.

    Raw passwords and tokens exist only when they are issued (the database keeps hashes and
    digests), so a second `seed_demo --if-empty --json` can only print working logins by issuing
    new ones. Previous `seed_demo` tokens of those users are revoked. Only demo users (e-mails
    ending in `.demo`) are touched; returns None when the database has no demo staff user.
    """
    staff = User.objects.filter(email=STAFF_EMAIL).first()
    if staff is None:
        return None
    now = timezone.now()
    owner_password = "demo-" + secrets.token_urlsafe(9)
    staff_password = "staff-" + secrets.token_urlsafe(9)
    memberships = list(
        TenantMember.objects.filter(role="OWNER", user__email__endswith=DEMO_EMAIL_SUFFIX)
        .select_related("tenant", "user")
        .order_by("tenant__created_at", "tenant__id")[:tenants_limit]
    )
    with transaction.atomic():
        staff.set_password(staff_password)
        staff.save(update_fields=["password"])
        owner_hash = make_password(owner_password)
        users = [membership.user for membership in memberships]
        User.objects.filter(pk__in=[u.pk for u in users]).update(password=owner_hash)
        ApiToken.objects.filter(user__in=[staff, *users], name=TOKEN_NAME, revoked_at__isnull=True).update(
            revoked_at=now
        )
        staff_token, staff_raw = _issue_token(staff.pk, now)
        issued = [_issue_token(user.pk, now) for user in users]
        ApiToken.objects.bulk_create([staff_token, *(token for token, _ in issued)])
    return {
        "staff": Login(staff.email, staff_password, staff_raw).as_dict(),
        "tenants": [
            {
                "id": str(membership.tenant_id),
                "slug": membership.tenant.slug,
                "name": membership.tenant.name,
                "status": membership.tenant.status,
                "owner": Login(membership.user.email, owner_password, raw).as_dict(),
            }
            for membership, (_, raw) in zip(memberships, issued, strict=True)
        ],
    }
