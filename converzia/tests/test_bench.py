"""`manage.py bench` against a real server (pytest-django's live server on the test database) and, for
the webhook scenarios, real `run_worker` subprocesses the command starts on the same database."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections import Counter
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from PIL import Image

from converzia.models import ApiToken, TenantRole
from converzia.tests.factories import StaffUserFactory, TenantFactory, TenantMemberFactory
from deliveries.tests.factories import DeliveryFactory
from leads.measure.load import MEASURE_SLUG
from leads.models import InboxChange, InboxChangeStatus, LeadEvent, LeadEventType, LeadOffer
from leads.models import LeadOfferStatus as S
from leads.tests.factories import LeadOfferFactory, OfferFactory
from leads.tests.test_worker import WorkerProcess, clear_queue, worker_database_url
from portal.stats_view import tenant_stats_refresh

pytestmark = pytest.mark.django_db(transaction=True)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The whale has more than a page (50) of lead_offers, so a session follows a next-page cursor.
WHALE_LEADS = 60
# Statuses the ops scenario can move there and back (QUALIFYING ⇄ HUMAN_HANDOFF, SCORED ⇄ QUALIFYING).
REVERSIBLE = (S.QUALIFYING, S.SCORED, S.HUMAN_HANDOFF)


@pytest.fixture
def dataset():
    """Two tenants with an owner each and a spread of lead_offers; a staff user."""
    StaffUserFactory()
    for size in (WHALE_LEADS, 12):
        tenant = TenantFactory()
        TenantMemberFactory(tenant=tenant, role=TenantRole.OWNER)
        offer = OfferFactory(tenant=tenant)
        for index in range(size):
            status = (S.ENGAGED, S.LEAD_READY, S.SENT_TO_DEVELOPER, S.DISQUALIFIED, *REVERSIBLE)[index % 7]
            lead_offer = LeadOfferFactory(offer=offer, status=status)
            if status == S.SENT_TO_DEVELOPER:
                DeliveryFactory(lead_offer=lead_offer, delivered=True)
    tenant_stats_refresh()


@pytest.fixture
def queue():
    """The webhook scenarios defer jobs and start workers that run periodic ones: an empty queue
    before and after (procrastinate's tables are not flushed between tests)."""
    clear_queue()
    yield
    clear_queue()


def run_bench(*args: str, **options) -> list[dict]:
    """The JSON results; no report folder unless the test names one (never the repository's)."""
    if "report_dir" not in options:
        options["no_report"] = True
    out = StringIO()
    call_command("bench", *args, stdout=out, stderr=StringIO(), **options)
    return json.loads(out.getvalue())


def bench_workers() -> list[str]:
    """application_name of the database connections of workers the bench started (none once stopped)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'cvz-bench-worker-%%'"
        )
        return [name for (name,) in cursor.fetchall()]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_quick_runs_every_scenario_without_errors(dataset, live_server, queue, tmp_path):
    results = run_bench("--quick", "--json", url=live_server.url, report_dir=tmp_path)

    names = {result["name"] for result in results}
    assert {"leads.first_page", "leads.search", "stats.whale.uncached", "funnel.whale.cached"} <= names
    assert {"admin.revenue.uncached", "admin.stats", "admin.queue"} <= names
    assert {"sessions.users", "reads.mixed", "ops.transition", "webhook.ack", "webhook.end_to_end"} <= names
    for result in results:
        assert result["failed"] == 0, result
        assert result["requests"] > 0 and result["p50_ms"] > 0
    # Uncached reads were timed against their own SQL; cached reads run none.
    by_name = {result["name"]: result for result in results}
    assert by_name["stats.whale.uncached"]["raw_sql_p50_ms"] > 0
    assert by_name["stats.whale.uncached"]["overhead_ratio"] > 0
    assert by_name["stats.whale.cached"]["raw_sql_p50_ms"] is None
    # The throw-away tokens are revoked when the run ends.
    assert not ApiToken.objects.filter(name="bench", revoked_at=None).exists()
    # Throughput scenarios say what they reached and against which floor.
    assert by_name["reads.mixed"]["throughput_target"] == 400
    assert set(by_name["reads.mixed"]["extra"]["requests_per_s_by_concurrency"]) == {"4", "8"}
    assert by_name["webhook.end_to_end"]["throughput_unit"] == "leads/s"
    assert by_name["webhook.end_to_end"]["extra"]["leads"] == 50
    assert by_name["webhook.end_to_end"]["throughput_per_s"] > 0
    assert bench_workers() == []

    # The report folder: the JSON printed, the table, and a real chart.
    (folder,) = tmp_path.iterdir()
    assert folder.name.endswith("Z")
    assert json.loads((folder / "report.json").read_text()) == results
    markdown = (folder / "report.md").read_text()
    assert "| webhook.end_to_end |" in markdown and "| leads.first_page |" in markdown
    width, height = png_size(folder / "latency.png")
    assert width > 600 and height > 400
    # Matplotlib drew the bars: the p50, p95 and p99 colours are all in the picture.
    with Image.open(folder / "latency.png") as image:
        colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert {(0x4C, 0x72, 0xB0), (0xDD, 0x84, 0x52), (0xC4, 0x4E, 0x52)} <= colours


def test_no_report_writes_no_folder(dataset, live_server, tmp_path):
    results = run_bench(
        "--quick", "--json", "--no-report", "--scenario", "stats.small.cached", url=live_server.url,
        report_dir=tmp_path,
    )  # fmt: skip
    assert [result["name"] for result in results] == ["stats.small.cached"]
    assert list(tmp_path.iterdir()) == []


def test_webhook_ack_and_end_to_end_with_the_worker_the_bench_starts(dataset, live_server, queue, tmp_path):
    results = run_bench(
        "--quick", "--json", "--scenario", "webhook.*", "--e2e-events", "30", "--e2e-changes-per-event", "2",
        url=live_server.url, report_dir=tmp_path,
    )  # fmt: skip

    ack, end_to_end = results
    assert (ack["name"], end_to_end["name"]) == ("webhook.ack", "webhook.end_to_end")
    assert ack["failed"] == 0 and ack["requests"] == 20
    assert ack["our_target_ms"] == [5, 20] and ack["guide_target_ms"] == [500, 2000, 5000]
    assert end_to_end["failed"] == 0
    assert end_to_end["extra"]["leads"] == 60 and end_to_end["requests"] == 60
    assert end_to_end["throughput_target"] == 500 and end_to_end["meets_throughput"] is not None
    # Enqueue → start is read from when the stub saw each change's Graph request.
    assert end_to_end["extra"]["enqueue_to_start_ms"]["p95"] > 0
    # Every change (warm-up 2 + 20 acked + 30 × 2) became a lead_offer of the measurement tenant.
    assert dict(Counter(InboxChange.objects.values_list("status", flat=True))) == {
        InboxChangeStatus.PROCESSED: 82
    }
    assert LeadOffer.objects.filter(tenant__slug=MEASURE_SLUG).count() == 82
    assert wait_for(lambda: bench_workers() == [])


def test_end_to_end_alone_warms_the_worker_up_first(dataset, live_server, queue, tmp_path):
    (end_to_end,) = run_bench(
        "--quick", "--json", "--scenario", "webhook.end_to_end", "--e2e-events", "10",
        url=live_server.url, report_dir=tmp_path,
    )  # fmt: skip
    assert end_to_end["failed"] == 0 and end_to_end["extra"]["leads"] == 10
    # 10 warm-up events went first, so the stub saw them too.
    assert end_to_end["extra"]["graph_requests"] == 20


def test_worker_running_uses_the_running_worker_and_leaves_it_running(dataset, live_server, queue, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "converzia.settings.test",
        "DATABASE_URL": worker_database_url(),
        "META_GRAPH_URL": f"http://127.0.0.1:{port}",  # the stub the bench will start
        "META_PAGE_ACCESS_TOKEN": "test-page-token",
        "PGAPPNAME": "cvz-test-own-worker",
    }
    worker = WorkerProcess(env, ["--concurrency", "4"], tmp_path)
    try:
        worker.wait_listening()
        results = run_bench(
            "--quick", "--json", "--scenario", "webhook.*", "--e2e-events", "10", "--worker-running",
            "--graph-port", str(port), url=live_server.url, report_dir=tmp_path,
        )  # fmt: skip
        assert [result["failed"] for result in results] == [0, 0], results
        assert results[1]["extra"]["leads"] == 10
        assert results[1]["extra"]["worker"].startswith("already running")
        assert bench_workers() == []  # the bench started none
        assert worker.process.poll() is None  # nor stopped ours
    finally:
        worker.kill()


def test_worker_running_needs_the_graph_port(dataset, live_server):
    with pytest.raises(CommandError, match="--graph-port"):
        run_bench("--quick", "--worker-running", url=live_server.url)


def test_transitions_go_there_and_back(dataset, live_server, tmp_path):
    (whale_id, _), *_ = Counter(LeadOffer.objects.values_list("tenant_id", flat=True)).most_common()
    before = dict(LeadOffer.objects.filter(status__in=REVERSIBLE).values_list("id", "status"))

    (result,) = run_bench(
        "--quick", "--json", "--scenario", "ops.transition", url=live_server.url, report_dir=tmp_path
    )

    assert result["failed"] == 0 and result["requests"] == 20
    assert result["our_target_ms"] == [10, 40] and result["guide_target_ms"] == [200, 500, 1000]
    # Every row is back where it was; each request left its STATUS_CHANGE event.
    assert dict(LeadOffer.objects.filter(pk__in=before).values_list("id", "status")) == before
    moved = LeadEvent.objects.filter(event_type=LeadEventType.STATUS_CHANGE)
    assert moved.count() == 20 + result["extra"]["moved_back_after_the_run"]
    assert set(moved.values_list("lead_offer__tenant_id", flat=True)) == {whale_id}


def test_sessions_follow_the_cursor_with_a_token_per_user(dataset, live_server, tmp_path):
    (result,) = run_bench(
        "--quick", "--json", "--scenario", "sessions.users", "--users", "4", "--session-loops", "2",
        url=live_server.url, report_dir=tmp_path,
    )  # fmt: skip

    # Two tenants with owners, two users each; a whale loop has a next page (6 requests), the small
    # tenant's does not (5): 2 loops × (6 + 6 + 5 + 5).
    assert result["failed"] == 0
    assert result["requests"] == 44
    assert result["throughput_per_s"] > 0 and result["extra"]["users"] == 4
    # 1 staff + 2 measured owners + 4 session users, all revoked.
    assert ApiToken.objects.filter(name="bench").count() == 7
    assert not ApiToken.objects.filter(name="bench", revoked_at=None).exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def test_scenario_globs_select_and_an_unknown_one_lists_the_names(dataset, live_server):
    results = run_bench("--quick", "--json", "--scenario", "stats.*", url=live_server.url)
    assert {result["name"] for result in results} == {
        "stats.whale.uncached",
        "stats.small.uncached",
        "stats.whale.cached",
        "stats.small.cached",
    }
    with pytest.raises(CommandError, match="leads.first_page"):
        run_bench("--quick", "--scenario", "nope.*", url=live_server.url)


def test_no_server_is_a_clear_error(dataset):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CommandError, match="No server answers"):
        run_bench(url=f"http://127.0.0.1:{port}")


def test_an_empty_database_is_a_clear_error(live_server):
    with pytest.raises(CommandError, match="seed_demo"):
        run_bench("--quick", url=live_server.url)
