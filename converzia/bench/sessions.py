"""Portal users at once: the guide's "concurrent user sessions" benchmark, and the mixed read load that
TARGETS.md asks to sustain at ≥ 400 requests/s on 2 cores with 0 errors.

- Sessions: K simulated tenant users (owners of the largest tenants, a token each), every one running
  the loop a person runs in the portal: the leads list, its next page by cursor, one lead's detail,
  the stats, the funnel and the balance, back to back (no think time: K requests in flight).
- Mixed reads: the portal's reads of two tenants (the whale and the small one) shuffled into one list,
  sent closed-loop at a few concurrencies in turn; the one with the most requests/s is reported.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

from converzia.bench.fixture import BenchFixture, MeasuredTenant, SessionUser
from converzia.bench.http import HttpRequest, LoadResult, SessionScript, run_closed_loop, run_sessions

LEADS = "/api/portal/leads"
PAGE_SIZE = 50
# Requests one session loop sends: list, next page, detail, stats, funnel, balance.
SESSION_LOOP_REQUESTS = 6
MIXED_READ_TARGET_PER_S = 400.0


def _headers(token: str, tenant_id: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json", "X-Tenant-ID": str(tenant_id)}


def _get(path: str, headers: dict[str, str], params: dict[str, object] | None = None) -> HttpRequest:
    return HttpRequest("GET", path + (f"?{urlencode(params)}" if params else ""), headers)


def _last_30_days(today: dt.date) -> dict[str, object]:
    return {"created_from": (today - dt.timedelta(days=29)).isoformat(), "created_to": today.isoformat()}


def _page(status: int, body: bytes) -> tuple[list[str], str | None]:
    """The lead ids of a list page and the cursor of the next one (none when the answer failed)."""
    if status != 200:
        return [], None
    try:
        page = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [], None
    ids = [row["id"] for row in page.get("results", [])]
    next_link = page.get("next")
    cursors = parse_qs(urlsplit(next_link).query).get("cursor") if next_link else None
    return ids, cursors[0] if cursors else None


def session_script(
    user: SessionUser, today: dt.date, *, loops: int, seed: int
) -> Callable[[], SessionScript]:
    """One user's session: `loops` times list → next page → a detail → stats → funnel → balance."""
    headers = _headers(user.token, user.tenant_id)
    chooser = random.Random(seed)

    def script() -> SessionScript:
        for _ in range(loops):
            ids, cursor = _page(*(yield _get(LEADS, headers, {"page_size": PAGE_SIZE})))
            if cursor is not None:
                more, _ = _page(*(yield _get(LEADS, headers, {"page_size": PAGE_SIZE, "cursor": cursor})))
                ids += more
            if ids:
                yield _get(f"{LEADS}/{chooser.choice(ids)}", headers)
            yield _get(f"{LEADS}/stats", headers)
            yield _get("/api/portal/funnel", headers, _last_30_days(today))
            yield _get("/api/portal/billing/balance", headers)

    return script


def run_user_sessions(
    base_url: str, fixture: BenchFixture, *, loops: int, max_seconds: float | None
) -> LoadResult:
    scripts = [
        session_script(user, fixture.today, loops=loops, seed=index)
        for index, user in enumerate(fixture.session_users)
    ]
    return run_sessions(base_url, scripts, max_seconds=max_seconds)


def _tenant_reads(tenant: MeasuredTenant, today: dt.date) -> list[HttpRequest]:
    headers = _headers(tenant.owner_token, tenant.tenant.pk)
    reads = [
        _get(LEADS, headers, {"page_size": PAGE_SIZE}),
        _get(LEADS, headers, {"page_size": PAGE_SIZE, "status": "LEAD_READY"}),
        _get(LEADS, headers, {"page_size": PAGE_SIZE, **_last_30_days(today)}),
        _get(f"{LEADS}/stats", headers),
        _get("/api/portal/funnel", headers, _last_30_days(today)),
        _get("/api/portal/offers", headers),
        _get("/api/portal/billing/balance", headers),
        _get("/api/portal/billing/ledger", headers),
    ]
    reads += [_get(f"{LEADS}/{pk}", headers) for pk in tenant.lead_offer_ids[:4]]
    return reads


def mixed_reads(fixture: BenchFixture) -> list[HttpRequest]:
    """Both measured tenants' portal reads, shuffled the same way every run."""
    reads = _tenant_reads(fixture.whale, fixture.today) + _tenant_reads(fixture.small, fixture.today)
    random.Random(0).shuffle(reads)
    return reads


@dataclass(frozen=True)
class MixedLoad:
    best: LoadResult
    concurrency: int
    requests_per_s: dict[int, float]  # by concurrency tried
    failed: int  # over every concurrency tried


def run_mixed_reads(
    base_url: str, requests: list[HttpRequest], *, levels: Sequence[int], seconds: float, warmup: int
) -> MixedLoad:
    """Each concurrency in turn for `seconds`; the best by requests/s is kept, failures of all count."""
    runs: dict[int, LoadResult] = {}
    for index, concurrency in enumerate(levels):
        runs[concurrency] = run_closed_loop(
            base_url,
            requests,
            total=10**9,  # the time limit ends each run
            concurrency=concurrency,
            warmup=warmup if index == 0 else 0,
            max_seconds=seconds,
        )
    best = max(runs, key=lambda level: runs[level].requests_per_s)
    result = runs[best]
    failed = sum(load.failed for load in runs.values())
    if failed and not result.failed:
        # The best run was clean but another was not: its failure must still show.
        result.first_failure = next(load.first_failure for load in runs.values() if load.failed)
    return MixedLoad(
        best=result,
        concurrency=best,
        requests_per_s={level: round(load.requests_per_s, 1) for level, load in runs.items()},
        failed=failed,
    )
