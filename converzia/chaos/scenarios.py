"""The chaos suite's faults and what each must leave behind (TARGETS.md "Reliability and security").

Each scenario injects its fault into the running `ChaosStack`, checks the database and the answers,
and returns `Figure`s: one printed line each, measured against its target.
"""

from __future__ import annotations

import datetime as dt
import http.client
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Count
from django.utils import timezone

from billing.models import CreditLedger, CreditTransactionType
from converzia.bench.slow_clients import slow_clients_measure
from converzia.chaos.stack import ChaosSetupError, ChaosStack
from converzia.models import MembershipStatus, TenantMember, TenantRole, User
from converzia.services import api_token_issue
from deliveries.measure.load import deliveries_create, lead_offers_create, measure_tenants_ensure
from deliveries.models import Delivery, DeliveryStatus
from deliveries.services import dispatcher_wake
from leads.measure.load import (
    MeasureRoute,
    SignedPost,
    measure_route_ensure,
    next_leadgen_number,
    percentile,
    signed_posts,
)
from leads.meta import signature_header
from leads.models import InboxChange, InboxChangeStatus, InboxEvent, LeadOffer, LeadOfferStatus, LeadSource

WEBHOOK_PATH = "/api/webhooks/meta-leads"
# Meta gives a webhook 5 s (TARGETS reliability 2); our client waits longer so a slow answer is measured.
ANSWER_BUDGET_S = 5.0
CLIENT_TIMEOUT_S = 15.0
PROCESSING_TIMEOUT_S = 900.0
STALLED_PROGRESS_S = 60.0


@dataclass(frozen=True)
class Sizes:
    """How big each fault is: the full run proves TARGETS' figures, `--short` the same faults in minutes."""

    events: int
    batches: int
    batch_changes: int
    outage_s: float
    redis_phase_s: float
    slow_clients: int
    slow_seconds: float


FULL = Sizes(
    events=10_000,
    batches=3,
    batch_changes=1_000,
    outage_s=30,
    redis_phase_s=8,
    slow_clients=50,
    slow_seconds=20,
)
SHORT = Sizes(
    events=1_000, batches=2, batch_changes=100, outage_s=10, redis_phase_s=4, slow_clients=50, slow_seconds=8
)


@dataclass(frozen=True)
class Figure:
    target: str  # TARGETS.md "Reliability and security" item
    name: str
    measured: str
    limit: str
    ok: bool

    def line(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        return f"[{verdict}] {self.target}. {self.name}: {self.measured} (target: {self.limit})"


# --- sending Meta events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tagged:
    kind: str  # valid, duplicate, bad_signature, malformed
    post: SignedPost


@dataclass
class Answer:
    tagged: Tagged
    status: int | None
    seconds: float
    error: str = ""


def _post(
    client: http.client.HTTPConnection | None, url: str, tagged: Tagged
) -> tuple[Answer, http.client.HTTPConnection | None]:
    target = urlsplit(url)
    if client is None:
        client = http.client.HTTPConnection(target.hostname, target.port, timeout=CLIENT_TIMEOUT_S)
    started = time.perf_counter()
    try:
        client.request(
            "POST",
            WEBHOOK_PATH,
            body=tagged.post.body,
            headers={"Content-Type": "application/json", "X-Hub-Signature-256": tagged.post.signature},
        )
        response = client.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        client.close()
        return Answer(tagged, None, time.perf_counter() - started, type(exc).__name__), None
    answer = Answer(tagged, response.status, time.perf_counter() - started)
    if response.will_close:
        client.close()
        client = None
    return answer, client


def post_tagged(url: str, posts: Sequence[Tagged], *, concurrency: int, pace_s: float = 0.0) -> list[Answer]:
    """POST each body once from `concurrency` threads (each `pace_s` apart per thread)."""
    answers: list[Answer] = []
    lock = threading.Lock()
    pending = iter(posts)

    def run() -> None:
        client = None
        mine: list[Answer] = []
        while True:
            with lock:
                tagged = next(pending, None)
            if tagged is None:
                break
            answer, client = _post(client, url, tagged)
            mine.append(answer)
            if pace_s:
                time.sleep(pace_s)
        if client is not None:
            client.close()
        with lock:
            answers.extend(mine)

    threads = [threading.Thread(target=run, name=f"chaos-poster-{n}") for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def retry_like_meta(url: str, failed: list[Tagged], *, rounds: int = 20, pause_s: float = 1.0) -> int:
    """Meta re-sends what was not acknowledged with a 200; returns how many never were."""
    for _ in range(rounds):
        if not failed:
            return 0
        answers = post_tagged(url, failed, concurrency=4)
        failed = [answer.tagged for answer in answers if answer.status != 200]
        if failed:
            time.sleep(pause_s)
    return len(failed)


def malformed_posts(count: int, secret: str) -> list[SignedPost]:
    """Correctly signed bodies that are not Meta events: every one must be refused with nothing stored."""
    shapes = [
        b"{",
        b"[]",
        b'{"object": "page", "entry": {}}',
        b'{"object": "page", "entry": [{"changes": [{"field": "leadgen", "value": {"leadgen_id": []}}]}]}',
        b'{"object": "page", "entry": [{"changes": [{"field": "leadgen", "value": "x"}]}]}',
        "\u0000".encode() + b"{}",
        b'{"object": "page", "entry": [{"changes": [{"field": "leadgen",'
        b' "value": {"leadgen_id": "1\\u0000"}}]}]}',
    ]
    bodies = [shapes[index % len(shapes)] + b" " * (index // len(shapes)) for index in range(count)]
    return [
        SignedPost(body=body, signature=signature_header(body, secret), leadgen_ids=()) for body in bodies
    ]


def wrongly_signed(posts: Sequence[SignedPost]) -> list[SignedPost]:
    return [
        SignedPost(
            body=post.body,
            signature=signature_header(post.body, "not-the-app-secret"),
            leadgen_ids=post.leadgen_ids,
        )
        for post in posts
    ]


@dataclass
class LeadCheck:
    expected: int
    lost: int
    doubled: int
    unprocessed: dict[str, int] = field(default_factory=dict)


def wait_and_count(
    route: MeasureRoute, leadgen_ids: Sequence[str], *, timeout_s: float, workers_alive: Callable[[], bool]
) -> LeadCheck:
    """Wait until no change of `leadgen_ids` is PENDING, then count leads lost and doubled. Gives up
    early when no worker is left or nothing moved for STALLED_PROGRESS_S: the figures then show it."""
    wanted = sorted(set(leadgen_ids))
    deadline = time.monotonic() + timeout_s
    changes = InboxChange.objects.filter(ad_id=route.ad_id, leadgen_id__in=wanted)
    last_pending, moved_at = -1, time.monotonic()
    while time.monotonic() < deadline and workers_alive():
        pending = changes.filter(status=InboxChangeStatus.PENDING).count()
        if pending == 0 and changes.values("leadgen_id").distinct().count() >= len(wanted):
            break
        if pending != last_pending:
            last_pending, moved_at = pending, time.monotonic()
        elif time.monotonic() - moved_at > STALLED_PROGRESS_S:
            break
        time.sleep(0.5)
    sources = LeadSource.objects.filter(tenant_id=route.tenant_id, leadgen_id__in=wanted)
    per_id = Counter(sources.values_list("leadgen_id", flat=True))
    lead_offers = (
        LeadOffer.objects.filter(tenant_id=route.tenant_id, lead__sources__leadgen_id__in=wanted)
        .values("lead_id")
        .annotate(n=Count("pk", distinct=True))
    )
    doubled = sum(count - 1 for count in per_id.values() if count > 1)
    doubled += sum(row["n"] - 1 for row in lead_offers if row["n"] > 1)
    unprocessed = dict(
        changes.exclude(status__in=[InboxChangeStatus.PROCESSED, InboxChangeStatus.REPLAY])
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return LeadCheck(
        expected=len(wanted), lost=len(wanted) - len(per_id), doubled=doubled, unprocessed=unprocessed
    )


# --- 1: ingestion integrity ---------------------------------------------------------------------------


def ingestion_integrity(stack: ChaosStack, sizes: Sizes) -> list[Figure]:
    route = measure_route_ensure()
    secret = settings.META_APP_SECRET
    number = next_leadgen_number(route)
    singles = signed_posts(
        route=route, first_number=number, events=sizes.events, changes_per_event=1, secret=secret
    )
    number += sizes.events
    batches = signed_posts(
        route=route,
        first_number=number,
        events=sizes.batches,
        changes_per_event=sizes.batch_changes,
        secret=secret,
    )
    number += sizes.batches * sizes.batch_changes
    bad_count, malformed_count = sizes.events * 5 // 100, sizes.events * 2 // 100
    bad = wrongly_signed(
        signed_posts(route=route, first_number=number, events=bad_count, changes_per_event=1, secret=secret)
    )
    chooser = random.Random(14)
    duplicates = chooser.sample([*singles, *batches], sizes.events // 10)
    tagged = (
        [Tagged("valid", post) for post in [*singles, *batches]]
        + [Tagged("duplicate", post) for post in duplicates]
        + [Tagged("bad_signature", post) for post in bad]
        + [Tagged("malformed", post) for post in malformed_posts(malformed_count, secret)]
    )
    chooser.shuffle(tagged)
    events_before = InboxEvent.objects.count()

    answers = post_tagged(stack.web_url, tagged, concurrency=8)
    by_kind: dict[str, Counter[str]] = {}
    for answer in answers:
        by_kind.setdefault(answer.tagged.kind, Counter())[str(answer.status or answer.error)] += 1
    unacknowledged = [
        a.tagged for a in answers if a.tagged.kind in ("valid", "duplicate") and a.status != 200
    ]
    never = retry_like_meta(stack.web_url, unacknowledged)
    stored = InboxEvent.objects.count() - events_before
    accepted_posts = sum(1 for a in answers if a.tagged.kind in ("valid", "duplicate") and a.status == 200)
    accepted_posts += len(unacknowledged) - never

    valid_ids = [leadgen for post in [*singles, *batches] for leadgen in post.leadgen_ids]
    check = wait_and_count(
        route, valid_ids, timeout_s=PROCESSING_TIMEOUT_S, workers_alive=lambda: bool(stack.live_workers())
    )
    bad_ids = [leadgen for post in bad for leadgen in post.leadgen_ids]
    bad_stored = InboxChange.objects.filter(leadgen_id__in=bad_ids).count()
    bad_refused = by_kind.get("bad_signature", Counter()).get("403", 0)
    malformed_refused = sum(
        n for status, n in by_kind.get("malformed", Counter()).items() if status.startswith("4")
    )
    return [
        Figure(
            "1",
            "ingestion",
            f"{len(tagged):,} POSTs ({sizes.events:,} events + {sizes.batches} batches of "
            f"{sizes.batch_changes:,} changes, {len(duplicates):,} duplicated): {check.expected:,} leads, "
            f"lost {check.lost}, doubled {check.doubled}, not processed {check.unprocessed or 0}",
            "0 lost, 0 doubled",
            check.lost == 0 and check.doubled == 0 and not check.unprocessed and never == 0,
        ),
        Figure(
            "1",
            "refusals",
            f"bad signatures {bad_refused:,}/{bad_count:,} answered 403, {bad_stored} stored; malformed "
            f"{malformed_refused}/{malformed_count} answered 4xx; events stored {stored:,} = POSTs accepted "
            f"{accepted_posts:,}",
            "every bad signature 403 with nothing stored",
            bad_refused == bad_count
            and bad_stored == 0
            and malformed_refused == malformed_count
            and stored == accepted_posts,
        ),
    ]


# --- 2 and 11: PostgreSQL stopped during ingestion -------------------------------------------------------


def postgres_outage(stack: ChaosStack, sizes: Sizes) -> list[Figure]:
    route = measure_route_ensure()
    secret = settings.META_APP_SECRET
    workers_before = {worker.name: worker.pid for worker in stack.live_workers()}
    lead_in_s, lead_out_s, rate_per_s = 3.0, 5.0, 20
    total = int((lead_in_s + sizes.outage_s + lead_out_s) * rate_per_s)
    posts = signed_posts(
        route=route, first_number=next_leadgen_number(route), events=total, changes_per_event=1, secret=secret
    )
    connection.close()  # this process's own connection would break with the server
    answers: list[Answer] = []
    sender = threading.Thread(
        target=lambda: answers.extend(
            post_tagged(
                stack.web_url, [Tagged("valid", p) for p in posts], concurrency=2, pace_s=2 / rate_per_s
            )
        ),
        name="chaos-outage-sender",
    )
    sender.start()
    time.sleep(lead_in_s)
    stack.postgres_stop()
    stopped_at = time.monotonic()
    time.sleep(sizes.outage_s)
    stack.postgres_start()
    back_at = time.monotonic()
    sender.join()
    close_old_connections()

    slowest = max((a.seconds for a in answers), default=0.0)
    statuses = Counter(str(a.status or a.error) for a in answers)
    never = retry_like_meta(stack.web_url, [a.tagged for a in answers if a.status != 200])
    ids = [leadgen for post in posts for leadgen in post.leadgen_ids]
    check = wait_and_count(
        route, ids, timeout_s=PROCESSING_TIMEOUT_S, workers_alive=lambda: bool(stack.live_workers())
    )
    resumed_s = _first_processed_after(route, ids, back_at)
    workers_after = {worker.name: worker.pid for worker in stack.live_workers()}
    same_workers = workers_after == workers_before and len(workers_before) == 2
    return [
        Figure(
            "2",
            f"PostgreSQL stopped {sizes.outage_s:g} s during ingestion",
            f"{len(answers):,} requests, slowest answer {slowest:.2f} s ({dict(statuses)}); after Meta-style "
            f"retries lost {check.lost}, doubled {check.doubled}, never acknowledged {never}",
            f"every answer within {ANSWER_BUDGET_S:g} s, 0 lost, 0 doubled",
            slowest <= ANSWER_BUDGET_S
            and check.lost == 0
            and check.doubled == 0
            and never == 0
            and not check.unprocessed,
        ),
        Figure(
            "11",
            "workers through the outage",
            f"{len(workers_after)} of {len(workers_before)} workers still the same processes "
            f"({', '.join(map(str, workers_after.values()))}), none restarted; outage "
            f"{back_at - stopped_at:.1f} s; "
            + (
                f"first lead processed {resumed_s:.1f} s after PostgreSQL was back"
                if resumed_s is not None
                else "nothing processed after recovery"
            ),
            "ride out the outage without a restart and resume",
            same_workers and resumed_s is not None and check.lost == 0,
        ),
    ]


def _first_processed_after(
    route: MeasureRoute, leadgen_ids: Sequence[str], back_at_monotonic: float
) -> float | None:
    back_at_wall = timezone.now() - dt.timedelta(seconds=time.monotonic() - back_at_monotonic)
    first = (
        InboxChange.objects.filter(
            ad_id=route.ad_id, leadgen_id__in=list(leadgen_ids), processed_at__gte=back_at_wall
        )
        .order_by("processed_at")
        .values_list("processed_at", flat=True)
        .first()
    )
    return None if first is None else (first - back_at_wall).total_seconds()


# --- 3: Redis stopped and frozen under portal load ------------------------------------------------------


PORTAL_READS = (
    "/api/portal/leads",
    "/api/portal/leads/stats",
    "/api/portal/funnel",
    "/api/portal/offers",
    "/api/portal/billing/balance",
)


def portal_member_token(tenant_id: uuid.UUID) -> str:
    email = f"chaos-owner-{uuid.uuid4().hex[:8]}@chaos.invalid"
    user = User.objects.create_user(email=email, password=uuid.uuid4().hex)
    TenantMember.objects.create(
        tenant_id=tenant_id, user=user, role=TenantRole.OWNER, status=MembershipStatus.ACTIVE
    )
    return api_token_issue(user=user, name="chaos").raw


def redis_outage(stack: ChaosStack, sizes: Sizes) -> list[Figure]:
    route = measure_route_ensure()
    headers = {
        "Authorization": f"Bearer {portal_member_token(route.tenant_id)}",
        "X-Tenant-ID": str(route.tenant_id),
    }
    phase = ["normal"]
    results: list[tuple[str, int | None, float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(offset: int) -> None:
        with httpx.Client(base_url=stack.web_url, headers=headers, timeout=CLIENT_TIMEOUT_S) as client:
            index = offset
            while not stop.is_set():
                path = PORTAL_READS[index % len(PORTAL_READS)]
                index += 1
                started = time.perf_counter()
                try:
                    status: int | None = client.get(path).status_code
                except httpx.HTTPError:
                    status = None
                with lock:
                    results.append((phase[0], status, time.perf_counter() - started))

    threads = [threading.Thread(target=load, args=(n,), name=f"chaos-portal-{n}") for n in range(4)]
    for thread in threads:
        thread.start()
    steps: list[tuple[str, Callable[[], None] | None, float]] = [
        ("normal", None, 3.0),
        ("stopped", stack.valkey_stop, sizes.redis_phase_s),
        ("restarted", stack.valkey_start, 3.0),
        ("frozen", stack.valkey_freeze, sizes.redis_phase_s),
        ("thawed", stack.valkey_thaw, 3.0),
    ]
    try:
        for name, action, seconds in steps:
            if action is not None:
                action()
            phase[0] = name
            time.sleep(seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    errors = [r for r in results if r[1] is None or r[1] >= 500]
    per_phase = []
    for name, _, _ in steps:
        rows = [r for r in results if r[0] == name]
        p99 = percentile([r[2] for r in rows], 0.99) * 1000 if rows else float("nan")
        per_phase.append(f"{name} {len(rows)} (p99 {p99:.0f} ms)")
    not_ok = Counter(r[1] for r in results if r[1] != 200)
    return [
        Figure(
            "3",
            "Redis stopped and frozen under portal load",
            f"{len(results):,} reads, {len(errors)} server errors or failures, "
            f"other non-200 {dict(not_ok) or 0}; " + ", ".join(per_phase),
            "0 server errors",
            not errors and not not_ok,
        )
    ]


# --- 5: a worker killed mid-delivery --------------------------------------------------------------------


def worker_killed_mid_delivery(stack: ChaosStack, sizes: Sizes) -> list[Figure]:
    slow = stack.start_receiver(delay_ms=3000)
    for worker in stack.live_workers()[1:]:
        worker.stop()
    [victim] = stack.live_workers()
    tenant = measure_tenants_ensure(count=1, receiver_url=f"{slow}/hook", credits=5)[0]
    [lead_offer] = lead_offers_create(tenants=[tenant], count=1, status=LeadOfferStatus.LEAD_READY)
    [delivery_id] = deliveries_create(lead_offers=[lead_offer], due=True)
    dispatcher_wake()
    if not _wait(lambda: _receiver_stats(slow)["requests"] >= 1, timeout_s=60):
        raise ChaosSetupError(f"the delivery never reached the receiver:\n{victim.log_tail()}")
    victim.kill()  # SIGKILL while the receiver holds the request
    killed_at = time.monotonic()
    # What the supervisor does (systemd Restart=on-failure): start a worker again; two, as before.
    stack.start_worker()
    stack.start_worker()
    delivered = _wait(
        lambda: Delivery.objects.filter(pk=delivery_id, status=DeliveryStatus.DELIVERED).exists(),
        timeout_s=120,
    )
    seconds = time.monotonic() - killed_at
    stats = _receiver_stats(slow)
    charges = CreditLedger.objects.filter(
        delivery_id=delivery_id, transaction_type=CreditTransactionType.CREDIT_CONSUMPTION
    ).count()
    return [
        Figure(
            "5",
            "worker SIGKILLed mid-delivery",
            f"delivered {'yes' if delivered else 'NO'} {seconds:.1f} s after the kill; receiver saw "
            f"{stats['requests']} request(s) with {stats['unique']} webhook-id(s); charges {charges}",
            "delivered once, repeats only with the same webhook-id, 1 charge",
            delivered and stats["unique"] == 1 and charges == 1,
        )
    ]


def _receiver_stats(url: str) -> dict[str, int]:
    return httpx.get(f"{url}/stats", timeout=5).json()


def _wait(predicate: Callable[[], object], *, timeout_s: float, poll_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return bool(predicate())


# --- 12: slow clients ---------------------------------------------------------------------------------


def slow_clients(stack: ChaosStack, sizes: Sizes) -> list[Figure]:
    if stack.nginx is None:
        return [
            Figure(
                "12",
                "slow clients",
                "not measured: nginx is not installed (apt-get install nginx)",
                "≤ 100 ms",
                False,
            )
        ]
    # Untimed first: the first requests of fresh processes (imports, connections) are not what is measured.
    slow_clients_measure(
        url=stack.web_url, slow=1, seconds=2, secret=settings.META_APP_SECRET, kinds=("body",)
    )
    result = slow_clients_measure(
        url=stack.web_url,
        slow=sizes.slow_clients,
        seconds=sizes.slow_seconds,
        secret=settings.META_APP_SECRET,
    )
    figures = result.figures()
    # TARGETS 12 is the p99 bound on both probes; the change against the unloaded baseline is shown, but
    # a p99 of a few dozen samples on a shared 2-core box moves by more than any tolerance worth judging.
    judged = [f for f in figures if f.statistic != "p99 vs baseline"]
    worst = {
        probe: max(
            (f.value_ms for f in judged if f.probe == probe and f.statistic == "p99"), default=float("nan")
        )
        for probe in ("health", "webhook ack")
    }
    drift = max((f.value_ms for f in figures if f.statistic == "p99 vs baseline"), default=0.0)
    failed = [f.line() for f in judged if not f.ok]
    return [
        Figure(
            "12",
            f"{sizes.slow_clients} slow clients (1 byte/s bodies, then headers) through nginx",
            f"health p99 {worst['health']:.1f} ms, webhook ack p99 {worst['webhook ack']:.1f} ms "
            f"(at most {drift:+.1f} ms against no slow clients)"
            + (f"; {'; '.join(failed)}" if failed else ""),
            f"health and webhook ack p99 ≤ {result.threshold_ms:g} ms, no failed request",
            not failed,
        )
    ]


SCENARIOS: dict[str, Callable[[ChaosStack, Sizes], list[Figure]]] = {
    "ingestion": ingestion_integrity,
    "redis": redis_outage,
    "worker_kill": worker_killed_mid_delivery,
    "slow_clients": slow_clients,
    "postgres": postgres_outage,
}
