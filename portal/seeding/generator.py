"""The bulk rows: leads, lead_sources, lead_offers, lead_events, deliveries and delivery_attempts.

One pass over the lead_offers in `created_at` order (as a live system would have inserted them):
each row picks its tenant, ad, person and status, then emits the rows that hang off it. Rows are
encoded straight to binary COPY and handed to the `CopyPump` in chunks.

Ids are UUIDv7-shaped: their leading 48 bits are a fixed base plus the row's offset in the data's
timeline (not the wall clock, so a seed gives the same ids on any day). Because rows are generated
in time order, every primary-key insert appends to the right edge of its index.

The loop is written for speed (it runs millions of times): everything constant is pre-encoded,
hot names are bound to locals, and fields are packed inline rather than through helpers.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import random
import unicodedata
import uuid
from collections.abc import Callable

from portal.seeding import binary as b
from portal.seeding import words
from portal.seeding.binary import I32, INT2, INT4, NULL, TS, UUID_LEN, CopyPump
from portal.seeding.plan import (
    DAY_US,
    HOUR_US,
    MINUTE_US,
    UNMAPPED_WINDOW_US,
    AdPlan,
    DatasetPlan,
    TenantPlan,
    stream,
)

PGE = b.PG_EPOCH_US
CHUNK = 25_000

# 2024-01-01T00:00:00Z in ms: the "timestamp" of the first row's id.
ID_BASE_MS = 1_704_067_200_000
_VERSION_BITS = (0x7 << 76) | (0x2 << 62)
_RANDOM_MASK = ((1 << 80) - 1) & ~(0xF << 76) & ~(0x3 << 62)

STATUSES = (
    "PENDING_MAPPING", "TO_BE_CONTACTED", "CONTACTED", "ENGAGED", "QUALIFYING", "SCORED", "LEAD_READY",
    "SENT_TO_DEVELOPER", "COOLING", "REACTIVATION", "DISQUALIFIED", "STOPPED", "HUMAN_HANDOFF",
)  # fmt: skip
PM, TBC, CONTACTED, ENGAGED, QUALIFYING, SCORED, READY, SENT = range(8)
COOLING, REACTIVATION, DISQUALIFIED, STOPPED, HANDOFF = range(8, 13)

# Status mix (percent) by age of the lead: new leads are still in conversation, old ones settled.
# PENDING_MAPPING is not drawn here: it comes from unmapped ads.
STATUS_MIX = {
    "new": {TBC: 45, CONTACTED: 25, ENGAGED: 12, QUALIFYING: 6, HANDOFF: 1, SCORED: 2, READY: 3, SENT: 4,
            DISQUALIFIED: 1, STOPPED: 1},
    "recent": {TBC: 8, CONTACTED: 18, ENGAGED: 12, QUALIFYING: 8, HANDOFF: 2, SCORED: 5, READY: 3, SENT: 9,
               COOLING: 15, REACTIVATION: 1, DISQUALIFIED: 11, STOPPED: 8},
    "settled": {TBC: 2, CONTACTED: 5, ENGAGED: 2, QUALIFYING: 1, HANDOFF: 1, SCORED: 5, READY: 2, SENT: 11,
                COOLING: 19, REACTIVATION: 2, DISQUALIFIED: 28, STOPPED: 22},
}  # fmt: skip
assert all(sum(mix.values()) == 100 for mix in STATUS_MIX.values()), "each mix is in percent"
NEW_AGE_US = DAY_US
RECENT_AGE_US = 14 * DAY_US

# The status a row came from (always an allowed transition into its status).
PREVIOUS = {
    PM: ("",), TBC: ("",), CONTACTED: ("TO_BE_CONTACTED",) * 9 + ("REACTIVATION",), ENGAGED: ("CONTACTED",),
    QUALIFYING: ("ENGAGED",), HANDOFF: ("ENGAGED", "QUALIFYING"), SCORED: ("QUALIFYING",),
    READY: ("QUALIFYING", "QUALIFYING", "SCORED", "HUMAN_HANDOFF"), SENT: ("LEAD_READY",),
    COOLING: ("TO_BE_CONTACTED", "CONTACTED", "CONTACTED", "ENGAGED"),
    REACTIVATION: ("COOLING", "DISQUALIFIED"),
    DISQUALIFIED: ("CONTACTED", "ENGAGED", "QUALIFYING", "COOLING"),
    STOPPED: ("TO_BE_CONTACTED", "CONTACTED", "ENGAGED", "COOLING"),
}  # fmt: skip

REUSE_SHARE = 0.07  # a lead_offer for a person another tenant already has
REUSE_RING = 50_000
UNMAPPED_SHARE = 0.15  # of a tenant's recent leads, when it has an unmapped ad
OPT_OUT_SHARE = 0.4  # of STOPPED leads: the person opted out everywhere
EMAIL_MISSING_SHARE = 0.15
REFUND_SHARE = 0.006  # of delivered leads
ATTEMPT_SAMPLE = 0.05  # delivered deliveries that keep their attempt rows
DEAD_LETTER_SAMPLE = 0.25  # dead letters that keep their attempt rows
DEAD_LETTER_ATTEMPTS = 5

LEAD_COLUMNS = (
    "id", "phone", "email", "first_name", "last_name", "full_name", "opted_out", "opted_out_at",
    "opt_out_reason", "country_code", "language", "first_contact_at", "last_contact_at", "created_at",
    "updated_at",
)  # fmt: skip
SOURCE_COLUMNS = (
    "id", "lead_id", "tenant_id", "leadgen_id", "platform", "ad_id", "adset_id", "campaign_id", "form_id",
    "form_data", "utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term", "attributed_cost",
    "created_at",
)  # fmt: skip
LEAD_OFFER_COLUMNS = (
    "id", "lead_id", "tenant_id", "offer_id", "lead_source_id", "status", "previous_status",
    "status_changed_at", "qualification_fields", "score_total", "score_breakdown", "scored_at",
    "billing_eligibility", "billing_notes", "contact_attempts", "last_attempt_at", "next_attempt_at",
    "reactivation_count", "first_response_at", "qualified_at", "disqualification_reason",
    "disqualification_category", "created_at", "updated_at",
)  # fmt: skip
EVENT_COLUMNS = (
    "id", "lead_id", "lead_offer_id", "tenant_id", "event_type", "details", "actor_type", "actor_id",
    "trace_id", "created_at",
)  # fmt: skip
DELIVERY_COLUMNS = (
    "id", "lead_offer_id", "tenant_id", "offer_id", "destination_id", "status", "payload", "attempt_count",
    "next_attempt_at", "last_attempt_at", "blocked_reason", "no_charge_reason", "error_message",
    "delivered_at", "refunded_at", "dead_letter_at", "dead_letter_reason", "trace_id", "created_at",
    "updated_at",
)  # fmt: skip
ATTEMPT_COLUMNS = (
    "id", "delivery_id", "attempt_number", "destination_id", "url", "status_code", "duration_ms",
    "succeeded", "error", "response_excerpt", "created_at",
)  # fmt: skip

EMPTY = b.text("")
JSON_EMPTY = b.jsonb({})
PHONE_LEN = I32.pack(14)
LEADGEN_LEN = I32.pack(16)


def _event_block(event_type: str, details: dict[str, object]) -> bytes:
    return b.text(event_type) + b.jsonb(details) + b.text("SYSTEM") + NULL + EMPTY


EV_READY = {
    prev: _event_block("STATUS_CHANGE", {"from": prev, "to": "LEAD_READY"})
    for prev in ("QUALIFYING", "SCORED", "HUMAN_HANDOFF")
}
EV_SENT = _event_block("STATUS_CHANGE", {"from": "LEAD_READY", "to": "SENT_TO_DEVELOPER"})
EV_DELIVERED = _event_block("DELIVERY_COMPLETED", {"destination": "WEBHOOK"})
EV_FAILED = _event_block("DELIVERY_FAILED", {"destination": "WEBHOOK", "error": "HTTP 503"})
EV_DEAD = _event_block("DELIVERY_DEAD_LETTER", {"destination": "WEBHOOK", "attempts": DEAD_LETTER_ATTEMPTS})

DELIVERY_STATUS = {
    name: b.text(name) for name in ("PENDING", "DELIVERED", "FAILED", "REFUNDED", "DEAD_LETTER")
}
ERROR_503 = b.text("HTTP 503 from destination")
ERROR_500 = b.text("HTTP 500 from destination")
DEAD_REASON = b.text(f"Failed {DEAD_LETTER_ATTEMPTS} attempts; last error HTTP 500.")
NO_DESTINATION = b.text("NO_ACTIVE_DESTINATION")
EXCERPT_OK = b.text('{"ok":true}')
EXCERPT_503 = b.text("Service Unavailable")
EXCERPT_500 = b.text("Internal Server Error")
CODE = {code: INT2.pack(2, code) for code in (200, 500, 503)}


def _ascii(value: str) -> str:
    return unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode().lower()


class PhoneBook:
    """Unique Argentine mobile numbers in E.164 without remembering the ones already issued.

    Per area code, the n-th number is `(n * multiplier + offset) mod size` over the valid subscriber
    range, a bijection when the multiplier is coprime with the size, so numbers never repeat.
    """

    # (area code, subscriber digits, first digit from, first digit to, weight %): all valid mobiles
    # for `phonenumbers` (checked by the tests). Area + subscriber is always 10 digits.
    AREAS = (("11", 8, 2, 8, 60), ("351", 7, 2, 8, 12), ("341", 7, 2, 8, 10), ("261", 7, 2, 8, 7),
             ("221", 7, 2, 6, 6), ("381", 7, 2, 7, 5))  # fmt: skip

    def __init__(self, rnd: random.Random) -> None:
        self._areas = []
        for area, digits, low, high, _ in self.AREAS:
            size = (high - low + 1) * 10 ** (digits - 1)
            multiplier = rnd.randrange(size // 3, size) | 1
            while math.gcd(multiplier, size) != 1:
                multiplier += 2
            self._areas.append(
                [f"+549{area}", low * 10 ** (digits - 1), size, multiplier, rnd.randrange(size), 0]
            )
        self._wheel = [i for i, (*_, weight) in enumerate(self.AREAS) for _ in range(weight)]

    def next(self, r: float) -> str:
        """The next number, always 14 characters (`+549` + 10 national digits)."""
        area = self._areas[self._wheel[int(r * len(self._wheel))]]
        if area[5] >= area[2]:
            area = self._areas[0]
            if area[5] >= area[2]:
                raise RuntimeError("Out of demo phone numbers.")
        n = area[5]
        area[5] = n + 1
        return area[0] + str(area[1] + (n * area[3] + area[4]) % area[2])


class Generator:
    """Generates and streams the bulk rows; afterwards `plan.tenants` carry charges and counts."""

    def __init__(self, plan: DatasetPlan, pump: CopyPump, progress: Callable[[int], None]) -> None:
        self.plan = plan
        self.config = plan.config
        self.pump = pump
        self.progress = progress
        self.rnd = stream(self.config.seed, "rows")
        self.phones = PhoneBook(stream(self.config.seed, "phones"))
        # People that a second tenant may also get: (lead id field, tenant, name, phone, e-mail).
        self.ring: list[tuple[bytes, TenantPlan, str, str, bytes]] = []
        self.status_counts = [0] * 13
        # (first, last and full name fields, full name, e-mail local part without its number)
        self._names = [
            (b.text(first) + b.text(last) + b.text(f"{first} {last}"), f"{first} {last}",
             f"{_ascii(first)}.{_ascii(last)}".encode())
            for first in words.FIRST_NAMES
            for last in words.LAST_NAMES
        ]  # fmt: skip
        self._email_tails = [f"{n}@{domain}".encode() for n in range(100) for domain in words.EMAIL_DOMAINS]
        self._status_wheels = {
            age: [status for status, weight in mix.items() for _ in range(weight)]
            for age, mix in STATUS_MIX.items()
        }
        self._status_fields = [b.text(s) for s in STATUSES]
        self._previous_fields = {prev: b.text(prev) for prevs in PREVIOUS.values() for prev in prevs if prev}
        self._previous_fields["SCORED"] = b.text("SCORED")
        self._previous_fields[""] = EMPTY
        self._dq_wheel = [
            (b.text(category), b.text(reason), category == "DUPLICATE")
            for category, weight, reason in words.DISQUALIFICATION
            for _ in range(weight)
        ]
        self._qualification = [self._qualification_fields() for _ in range(64)]
        self._breakdowns = [self._breakdown(score) for score in range(101)]
        self._score_fields = [INT2.pack(2, score) for score in range(101)]
        self._leadgen_base = 1_000_000_000_000_000 + (self.config.seed % 1000) * 1_000_000_000_000
        # Where the pass stands between chunks.
        self._whale_left = self.config.whale if plan.whale else 0
        self._pool_active = 0
        self._month = 0

    # --- pre-encoded variants ---------------------------------------------------------------

    def _qualification_fields(self) -> bytes:
        rnd = self.rnd
        low = rnd.randrange(60, 300) * 1000
        purpose = rnd.choice(words.PURPOSES)
        return b.jsonb(
            {
                "budget": {"min": low, "max": low + rnd.randrange(20, 200) * 1000, "currency": "USD"},
                "zone": rnd.sample(words.ZONES, rnd.randint(1, 2)),
                "timing": rnd.choice(words.TIMINGS),
                "purpose": purpose,
                "is_investor": purpose == "Inversión",
                "bedrooms": rnd.randint(1, 4),
            }
        )

    @staticmethod
    def _breakdown(score: int) -> bytes:
        # Split the score over the scoring dimensions in proportion to their maximum points.
        maxima = (("budget", 25), ("zone", 20), ("typology", 15), ("timing", 15), ("intent", 15),
                  ("conversation_quality", 10))  # fmt: skip
        parts = {name: (score * top) // 100 for name, top in maxima}
        parts["fine_prefs"] = score - sum(parts.values())
        return b.jsonb(parts)

    # --- the pass ---------------------------------------------------------------------------

    def run(self) -> None:
        total = self.config.leads
        for start in range(0, total, CHUNK):
            end = min(total, start + CHUNK)
            self._chunk(start, end)
            self.progress(end - start)

    def _chunk(self, first: int, last: int) -> None:  # noqa: C901 - one tight loop on purpose
        config, plan = self.config, self.plan
        rnd = self.rnd
        r = rnd.random
        bits = rnd.getrandbits
        total = config.leads
        start, now = config.start_us, config.now_us
        cap = now - MINUTE_US
        span = cap - start
        growth = 2.0  # the last month gets ~3x the leads of the first
        grow_k = 2 * growth * (1 + growth / 2)
        sqrt = math.sqrt
        bisect_right = bisect.bisect_right
        whale = plan.whale
        pool, joins, cumulative = plan.pool, plan.pool_joins, plan.pool_cumulative
        n_pool = len(pool)
        months = plan.month_starts
        n_months = len(months)
        timeline = self._timeline
        names, n_names = self._names, len(self._names)
        email_tails = self._email_tails
        wheel_new, wheel_recent, wheel_settled = (
            self._status_wheels[k] for k in ("new", "recent", "settled")
        )
        status_fields, previous_fields = self._status_fields, self._previous_fields
        qualification, n_qualification = self._qualification, len(self._qualification)
        dq_wheel, n_dq = self._dq_wheel, len(self._dq_wheel)
        score_fields, breakdowns = self._score_fields, self._breakdowns
        ring = self.ring
        next_phone = self.phones.next
        status_counts = self.status_counts
        leadgen_base = self._leadgen_base
        ts_pack, int2_pack, i32_pack = TS.pack, INT2.pack, I32.pack
        version, mask = _VERSION_BITS, _RANDOM_MASK
        be_pending, be_chargeable = b.text("PENDING"), b.text("CHARGEABLE")
        be_duplicate, be_spam = b.text("NOT_CHARGEABLE_DUPLICATE"), b.text("NOT_CHARGEABLE_SPAM")
        notes_duplicate = b.text("Refunded: duplicate of an earlier lead.")
        notes_spam = b.text("Refunded: spam / invalid contact.")
        opted_out_block = b.TRUE
        opt_out_reason = b.text("Pidió no recibir más mensajes.")
        not_opted_out = b.FALSE + NULL + EMPTY
        ar_es = b.text("AR") + b.text("es")
        hdr_lead, hdr_src, hdr_lo = b.field_count(15), b.field_count(17), b.field_count(24)
        hdr_ev, hdr_del, hdr_att = b.field_count(10), b.field_count(20), b.field_count(11)
        zero2 = int2_pack(2, 0)
        leads_out: list[bytes] = []
        sources_out: list[bytes] = []
        offers_out: list[bytes] = []
        events_out: list[bytes] = []
        deliveries_out: list[bytes] = []
        attempts_out: list[bytes] = []
        add_lead, add_source, add_offer = leads_out.append, sources_out.append, offers_out.append
        add_event, add_delivery, add_attempt = events_out.append, deliveries_out.append, attempts_out.append

        whale_left, pool_active, month = self._whale_left, self._pool_active, self._month

        for i in range(first, last):
            # --- when: stratified over the timeline, denser towards now --------------------------
            c = start + int((sqrt(1 + grow_k * (i + r()) / total) - 1) / growth * span)
            while month + 1 < n_months and c >= months[month + 1]:
                month += 1
            age = now - c
            id_ms = (ID_BASE_MS + (c - start) // 1000) << 80

            # --- who: the whale gets exactly its share, the rest by weight among joined tenants --
            if whale_left and r() * (total - i) < whale_left:
                tenant = whale
                whale_left -= 1
            else:
                while pool_active < n_pool and joins[pool_active] <= c:
                    pool_active += 1
                tenant = pool[bisect_right(cumulative, r() * cumulative[pool_active - 1], 0, pool_active - 1)]
            tenant.lead_offers += 1
            tenant_f = tenant.id_field

            # --- which ad, which status ------------------------------------------------------------
            if tenant.unmapped_ads and age < UNMAPPED_WINDOW_US and r() < UNMAPPED_SHARE:
                ad: AdPlan = tenant.unmapped_ads[0]
                s = PM
            else:
                ad_wheel = tenant.ad_wheel
                ad = ad_wheel[int(r() * len(ad_wheel))]
                wheel = (
                    wheel_new if age < NEW_AGE_US else wheel_recent if age < RECENT_AGE_US else wheel_settled
                )
                s = wheel[int(r() * 100)]
            ad.month_counts[month] += 1

            (
                s,
                changed,
                attempts,
                first_at,
                last_at,
                next_at,
                responded,
                scored,
                qualified,
                delivered,
                react,
            ) = timeline(s, c, cap, tenant)
            status_counts[s] += 1
            prevs = PREVIOUS[s]
            previous = prevs[int(r() * len(prevs))]

            lo_raw = (id_ms | (bits(80) & mask) | version).to_bytes(16, "big")
            lo_f = UUID_LEN + lo_raw
            src_f = UUID_LEN + (id_ms | (bits(80) & mask) | version).to_bytes(16, "big")
            c_f = ts_pack(8, c - PGE)
            changed_f = ts_pack(8, changed - PGE)

            # --- the person: new, or one another tenant already has ---------------------------------
            reused = None
            if ring and r() < REUSE_SHARE:
                j = int(r() * len(ring))
                if ring[j][1] is not tenant:
                    reused = ring[j]
                    ring[j] = ring[-1]
                    ring.pop()
            if reused is not None:
                lead_f, _, full_name, phone, email = reused
            else:
                lead_f = UUID_LEN + (id_ms | (bits(80) & mask) | version).to_bytes(16, "big")
                names_f, full_name, local = names[int(r() * n_names)]
                phone = next_phone(r())
                email = b"" if r() < EMAIL_MISSING_SHARE else local + email_tails[int(r() * 1000)]
                opted_out = s == STOPPED and r() < OPT_OUT_SHARE
                add_lead(
                    b"".join(
                        (
                            hdr_lead, lead_f, PHONE_LEN, phone.encode(), i32_pack(len(email)), email, names_f,
                            opted_out_block + changed_f + opt_out_reason if opted_out else not_opted_out,
                            ar_es,
                            NULL if first_at is None else ts_pack(8, first_at - PGE),
                            NULL if last_at is None else ts_pack(8, last_at - PGE),
                            c_f, changed_f,
                        )
                    )
                )  # fmt: skip
                if not opted_out:
                    entry = (lead_f, tenant, full_name, phone, email)
                    if len(ring) < REUSE_RING:
                        ring.append(entry)
                    else:
                        ring[int(r() * REUSE_RING)] = entry

            # --- attribution ---------------------------------------------------------------------------
            add_source(
                b"".join((hdr_src, src_f, lead_f, tenant_f, LEADGEN_LEN, b"%d" % (leadgen_base + i),
                          ad.source_block, c_f))
            )  # fmt: skip

            # --- the funnel row --------------------------------------------------------------------------
            score = None
            score_f = scored_f = NULL
            breakdown = JSON_EMPTY
            billing, notes, dq_reason, dq_category = be_pending, EMPTY, EMPTY, EMPTY
            if scored is not None:
                if s == SCORED:
                    score = 35 + int(r() * 45)
                elif s == DISQUALIFIED:
                    score = 10 + int(r() * 50)
                    previous = "SCORED"
                else:
                    score = 80 + int(r() * 21)
                score_f = score_fields[score]
                breakdown = breakdowns[score]
                scored_f = ts_pack(8, scored - PGE)
            if s == DISQUALIFIED:
                dq_category, dq_reason, duplicate = dq_wheel[int(r() * n_dq)]
                if duplicate:
                    billing = be_duplicate
            refunded = None
            if s == SENT:
                billing = be_chargeable
                if r() < REFUND_SHARE and cap - delivered > 2 * DAY_US:
                    refunded = delivered + int(
                        DAY_US * (1 + r() * min(9.0, (cap - delivered) / DAY_US - 1.5))
                    )
                    if r() < 0.7:
                        billing, notes = be_duplicate, notes_duplicate
                    else:
                        billing, notes = be_spam, notes_spam
            add_offer(
                b"".join(
                    (
                        hdr_lo, lo_f, lead_f, tenant_f, ad.offer_field, src_f, status_fields[s],
                        previous_fields[previous], changed_f,
                        JSON_EMPTY if responded is None else qualification[int(r() * n_qualification)],
                        score_f, breakdown, scored_f, billing, notes,
                        zero2 if attempts == 0 else int2_pack(2, attempts),
                        NULL if last_at is None else ts_pack(8, last_at - PGE),
                        NULL if next_at is None else ts_pack(8, next_at - PGE),
                        zero2 if react == 0 else int2_pack(2, react),
                        NULL if responded is None else ts_pack(8, responded - PGE),
                        NULL if qualified is None else ts_pack(8, qualified - PGE),
                        dq_reason, dq_category, c_f, changed_f,
                    )
                )
            )  # fmt: skip

            # --- timeline events ---------------------------------------------------------------------
            add_event(
                b"".join((hdr_ev, UUID_LEN, (id_ms | (bits(80) & mask) | version).to_bytes(16, "big"),
                          lead_f, lo_f, tenant_f, ad.created_event, c_f))
            )  # fmt: skip
            if qualified is None:
                continue
            qualified_f = ts_pack(8, qualified - PGE)
            ready_from = previous if s == READY else ("QUALIFYING", "SCORED")[int(r() * 2)]
            add_event(
                b"".join((hdr_ev, UUID_LEN, (id_ms | (bits(80) & mask) | version).to_bytes(16, "big"),
                          lead_f, lo_f, tenant_f, EV_READY[ready_from], qualified_f))
            )  # fmt: skip

            # --- the delivery ------------------------------------------------------------------------
            del_raw = (id_ms | (bits(80) & mask) | version).to_bytes(16, "big")
            del_f = UUID_LEN + del_raw
            destination_f = tenant.destination_field
            attempts_n = 0
            next_f = last_f = delivered_f = refunded_f = dead_f = NULL
            blocked = error = dead_reason = EMPTY
            attempt_times: list[int] = []
            if s == SENT:
                status = "REFUNDED" if refunded is not None else "DELIVERED"
                attempts_n = 2 if r() < 0.05 else 1
                delivered_f = last_f = ts_pack(8, delivered - PGE)
                updated = delivered
                if refunded is not None:
                    refunded_f = ts_pack(8, refunded - PGE)
                    updated = refunded
                    tenant.refunds.append((refunded, del_raw, lo_raw))
                tenant.charges.append((delivered, del_raw, lo_raw))
                if attempts_n == 2 or r() < ATTEMPT_SAMPLE:
                    attempt_times = [
                        qualified + (delivered - qualified) * k // attempts_n
                        for k in range(1, attempts_n + 1)
                    ]
                for block in (EV_SENT, EV_DELIVERED):
                    add_event(
                        b"".join((hdr_ev, UUID_LEN, (id_ms | (bits(80) & mask) | version).to_bytes(16, "big"),
                                  lead_f, lo_f, tenant_f, block, delivered_f))
                    )  # fmt: skip
            elif tenant.destination_disabled_us is not None and qualified >= tenant.destination_disabled_us:
                # Nowhere to send it: waits, never charged, until the tenant has a destination again.
                status, updated = "PENDING", qualified
                destination_f = NULL
                blocked = NO_DESTINATION
            elif cap - qualified < 15 * MINUTE_US:
                status, updated = "PENDING", qualified
                next_f = ts_pack(8, qualified + 30_000_000 - PGE)
            elif cap - qualified < 2 * DAY_US:
                status = "FAILED"
                attempts_n = 1 + int(r() * 4)
                last = min(cap, qualified + int(HOUR_US * r() * attempts_n))
                attempt_times = [
                    qualified + (last - qualified) * k // attempts_n for k in range(1, attempts_n + 1)
                ]
                last_f = ts_pack(8, last - PGE)
                next_f = ts_pack(8, last + MINUTE_US * 2**attempts_n - PGE)
                error = ERROR_503
                updated = last
                add_event(
                    b"".join((hdr_ev, UUID_LEN, (id_ms | (bits(80) & mask) | version).to_bytes(16, "big"),
                              lead_f, lo_f, tenant_f, EV_FAILED, last_f))
                )  # fmt: skip
            else:
                status = "DEAD_LETTER"
                attempts_n = DEAD_LETTER_ATTEMPTS
                last = min(cap, qualified + int(DAY_US * (0.5 + r())))
                if r() < DEAD_LETTER_SAMPLE:
                    attempt_times = [
                        qualified + (last - qualified) * k // attempts_n for k in range(1, attempts_n + 1)
                    ]
                last_f = dead_f = ts_pack(8, last - PGE)
                error = ERROR_500
                dead_reason = DEAD_REASON
                updated = last
                add_event(
                    b"".join((hdr_ev, UUID_LEN, (id_ms | (bits(80) & mask) | version).to_bytes(16, "big"),
                              lead_f, lo_f, tenant_f, EV_DEAD, dead_f))
                )  # fmt: skip
            offer = ad.offer
            payload = {
                "event": "lead.ready",
                "lead_offer_id": str(uuid.UUID(bytes=lo_raw)),
                "tenant_id": str(tenant.id),
                "offer": {"id": str(offer.id), "name": offer.name} if offer else None,
                "lead": {"name": full_name, "phone": phone, "email": email.decode()},
                "score": score,
                "qualified_at": dt.datetime.fromtimestamp(qualified / 1e6, tz=dt.UTC).isoformat(),
                "source": {"platform": "META", "ad_id": ad.ad_id},
            }
            add_delivery(
                b"".join(
                    (
                        hdr_del, del_f, lo_f, tenant_f, ad.offer_field, destination_f,
                        DELIVERY_STATUS[status], b.jsonb(payload), int2_pack(2, attempts_n), next_f, last_f,
                        blocked, EMPTY, error, delivered_f, refunded_f, dead_f, dead_reason, EMPTY,
                        qualified_f, ts_pack(8, updated - PGE),
                    )
                )
            )  # fmt: skip
            n_attempts = len(attempt_times)
            for number, at in enumerate(attempt_times, start=1):
                ok = number == n_attempts and status in ("DELIVERED", "REFUNDED")
                code = 200 if ok else 500 if status == "DEAD_LETTER" else 503
                add_attempt(
                    b"".join(
                        (
                            hdr_att, UUID_LEN, (id_ms | (bits(80) & mask) | version).to_bytes(16, "big"),
                            del_f, int2_pack(2, number), tenant.destination_field,
                            tenant.destination_url_field,
                            CODE[code], INT4.pack(4, 40 + int(r() * 400)), b.TRUE if ok else b.FALSE,
                            EMPTY if ok else ERROR_500 if code == 500 else ERROR_503,
                            EXCERPT_OK if ok else EXCERPT_500 if code == 500 else EXCERPT_503,
                            ts_pack(8, at - PGE),
                        )
                    )
                )  # fmt: skip

        self._whale_left, self._pool_active, self._month = whale_left, pool_active, month
        pump = self.pump
        pump.send("leads", LEAD_COLUMNS, leads_out)
        pump.send("lead_sources", SOURCE_COLUMNS, sources_out)
        pump.send("lead_offers", LEAD_OFFER_COLUMNS, offers_out)
        pump.send("lead_events", EVENT_COLUMNS, events_out)
        pump.send("deliveries", DELIVERY_COLUMNS, deliveries_out)
        pump.send("delivery_attempts", ATTEMPT_COLUMNS, attempts_out)

    def _timeline(
        self, s: int, c: int, cap: int, tenant: TenantPlan
    ) -> tuple[
        int, int, int, int | None, int | None, int | None, int | None, int | None, int | None, int | None, int
    ]:
        """When each step of the row's path happened, scaled to end before `cap`.

        Returns (status, status_changed_at, contact_attempts, first_attempt_at, last_attempt_at,
        next_attempt_at, first_response_at, scored_at, qualified_at, delivered_at, reactivation_count).
        Offsets are drawn log-uniformly (minutes to days); a row too young for its path has the
        whole path compressed into its age.
        """
        r = self.rnd.random
        if s <= TBC:
            next_at = c + int(5 * MINUTE_US * 36 ** r()) if s == TBC else None
            return s, c, 0, None, None, next_at, None, None, None, None, 0
        # Offsets from creation, in µs (floats until scaled).
        first = 2 * MINUTE_US * 180 ** r()
        last = first
        responded = scored = qualified = delivered = None
        attempts, react = 1, 0
        if s == CONTACTED:
            attempts = 1 + int(r() * 3)
            last = first + (attempts - 1) * 4 * HOUR_US * 12 ** r()
            changed = first
        elif s == COOLING or s == REACTIVATION:
            attempts = 3 + int(r() * 3)
            last = first + DAY_US * 6 ** r()
            changed = last + DAY_US * 5 ** r()
            if s == REACTIVATION:
                changed += 10 * DAY_US * 9 ** r()
                react = 1
        elif s == STOPPED:
            attempts = 1 + int(r() * 2)
            changed = first + 10 * MINUTE_US * 4320 ** r()
        elif s == DISQUALIFIED:
            if r() < 0.3:
                responded = first + 5 * MINUTE_US * 288 ** r()
                scored = responded + HOUR_US * 96 ** r()
                changed = scored + MINUTE_US * 1440 ** r()
            else:
                attempts = 1 + int(r() * 3)
                last = first + (attempts - 1) * 4 * HOUR_US * 12 ** r()
                changed = last + DAY_US * 15 ** r()
        else:  # ENGAGED and beyond
            attempts = 2 if r() < 0.3 else 1
            responded = first + 5 * MINUTE_US * 288 ** r()
            if s == ENGAGED:
                changed = responded
            elif s == QUALIFYING:
                changed = responded + 10 * MINUTE_US * 288 ** r()
            elif s == HANDOFF:
                changed = responded + 30 * MINUTE_US * 144 ** r()
            elif s == SCORED:
                changed = scored = responded + HOUR_US * 96 ** r()
            else:
                changed = scored = qualified = responded + HOUR_US * 120 ** r()
                if s == SENT:
                    changed = delivered = qualified + 3_000_000 * 200 ** r()
        end = changed if changed > last else last
        k = 1.0 if c + end <= cap else (cap - c) / end
        changed_at = c + int(changed * k)
        first_at = c + int(first * k)
        last_at = c + int(last * k)
        responded_at = None if responded is None else c + int(responded * k)
        scored_at = None if scored is None else c + int(scored * k)
        qualified_at = None if qualified is None else c + int(qualified * k)
        delivered_at = None if delivered is None else c + int(delivered * k)
        disabled = tenant.destination_disabled_us
        if s == SENT and disabled is not None and qualified_at >= disabled:
            # Nowhere to deliver to any more: the lead waits, ready, for a destination.
            s, changed_at, delivered_at = READY, qualified_at, None
        next_at = None
        if s == CONTACTED and cap - c < 7 * DAY_US:
            next_at = last_at + int(12 * HOUR_US * 6 ** r())
        return (s, changed_at, attempts, first_at, last_at, next_at, responded_at, scored_at, qualified_at,
                delivered_at, react)  # fmt: skip
