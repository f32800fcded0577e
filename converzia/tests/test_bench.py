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

from converzia.bench import report as bench_report
from converzia.bench.http import HttpRequest, LoadResult
from converzia.bench.scenarios import NO_TARGET, OverheadBasis, Scenario
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
# TARGETS.md "Framework overhead", in multiples of the liveness p50.
OVERHEAD_TARGETS = {
    **dict.fromkeys(
        ("leads.first_page", "leads.filtered", "leads.deep_page", "leads.detail", "stats.whale.uncached",
         "stats.small.uncached", "funnel.whale.uncached", "billing.balance", "billing.ledger",
         "ops.transition"),
        3,
    ),
    **dict.fromkeys(
        ("stats.whale.cached", "stats.small.cached", "funnel.whale.cached", "admin.revenue.cached",
         "webhook.ack"),
        2,
    ),
}  # fmt: skip


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


def run_bench_document(*args: str, **options) -> dict:
    """The JSON printed (liveness, overhead targets, results); no report folder unless the test names
    one (never the repository's)."""
    if "report_dir" not in options:
        options["no_report"] = True
    out = StringIO()
    call_command("bench", *args, stdout=out, stderr=StringIO(), **options)
    return json.loads(out.getvalue())


def run_bench(*args: str, **options) -> list[dict]:
    """The JSON results, one per scenario run."""
    return run_bench_document(*args, **options)["results"]


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
    document = run_bench_document("--quick", "--json", url=live_server.url, report_dir=tmp_path)
    results = document["results"]

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

    # Liveness runs first and is the unit of framework overhead; it was measured again after the reads.
    liveness = results[0]
    assert liveness["name"] == "health.live" and liveness["failed"] == 0
    assert document["liveness_p50_ms"] == liveness["p50_ms"] > 0
    assert document["liveness_p50_ms_after_reads"] == liveness["extra"]["p50_ms_after_reads"] > 0
    assert liveness["extra"]["requests_after_reads"] == 20
    uncached = by_name["stats.whale.uncached"]
    assert uncached["overhead_basis"] == "api-sql" and uncached["overhead_target_x"] == 3
    assert uncached["overhead_ms"] == pytest.approx(uncached["p50_ms"] - uncached["raw_sql_p50_ms"], abs=0.01)
    assert uncached["overhead_x_liveness"] == pytest.approx(
        uncached["overhead_ms"] / document["liveness_p50_ms"], abs=0.01
    )
    assert uncached["meets_overhead"] is (uncached["overhead_ms"] <= 3 * document["liveness_p50_ms"])
    cached = by_name["stats.whale.cached"]
    assert (cached["overhead_basis"], cached["overhead_ms"], cached["overhead_target_x"]) == (
        "p50",
        cached["p50_ms"],
        2,
    )
    assert (by_name["webhook.ack"]["overhead_target_x"], by_name["ops.transition"]["overhead_target_x"]) == (
        2,
        3,
    )
    assert by_name["webhook.ack"]["overhead_ms"] == by_name["webhook.ack"]["p50_ms"]
    assert by_name["leads.search"]["overhead_target_x"] is None
    assert by_name["leads.search"]["overhead_x_liveness"] > 0
    assert by_name["reads.mixed"]["overhead_basis"] == "p50-with-sql"
    assert by_name["webhook.end_to_end"]["overhead_ms"] is None
    targets = document["overhead_targets"]
    judged = {name for name, result in by_name.items() if result["overhead_target_x"] is not None}
    # 60 lead_offers have no page deep enough for leads.deep_page; every other target is judged.
    assert judged == set(OVERHEAD_TARGETS) - {"leads.deep_page"} and not targets["not_judged"]
    assert {name: by_name[name]["overhead_target_x"] for name in judged} == {
        name: target for name, target in OVERHEAD_TARGETS.items() if name in judged
    }
    assert set(targets["met"]) | set(targets["missed"]) == judged
    assert set(targets["missed"]) == {name for name in judged if by_name[name]["meets_overhead"] is False}

    # The report folder: the JSON printed, the table, and a real chart.
    (folder,) = tmp_path.iterdir()
    assert folder.name.endswith("Z")
    assert json.loads((folder / "report.json").read_text()) == document
    markdown = (folder / "report.md").read_text()
    assert "| webhook.end_to_end |" in markdown and "| leads.first_page |" in markdown
    assert "| overhead ms | × live | target × | met |" in markdown
    assert (
        f"Framework overhead (health.live p50 {document['liveness_p50_ms']:.2f} ms, measured first"
        in markdown
    )
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
    # Liveness runs even when not selected: it is the unit of overhead.
    assert [result["name"] for result in results] == ["health.live", "stats.small.cached"]
    assert results[1]["overhead_x_liveness"] == pytest.approx(
        results[1]["p50_ms"] / results[0]["p50_ms"], abs=0.01
    )
    assert list(tmp_path.iterdir()) == []


def test_webhook_ack_and_end_to_end_with_the_worker_the_bench_starts(dataset, live_server, queue, tmp_path):
    results = run_bench(
        "--quick", "--json", "--scenario", "webhook.*", "--e2e-events", "30", "--e2e-changes-per-event", "2",
        url=live_server.url, report_dir=tmp_path,
    )  # fmt: skip

    liveness, ack, end_to_end = results
    assert liveness["name"] == "health.live" and "p50_ms_after_reads" not in (liveness["extra"] or {})
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
    _liveness, end_to_end = run_bench(
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
        assert [result["failed"] for result in results] == [0, 0, 0], results
        assert results[2]["extra"]["leads"] == 10
        assert results[2]["extra"]["worker"].startswith("already running")
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

    liveness, result = run_bench(
        "--quick", "--json", "--scenario", "ops.transition", url=live_server.url, report_dir=tmp_path
    )

    assert result["failed"] == 0 and result["requests"] == 20
    assert result["our_target_ms"] == [10, 40] and result["guide_target_ms"] == [200, 500, 1000]
    assert result["overhead_ms"] == result["p50_ms"] and result["overhead_target_x"] == 3
    assert result["overhead_x_liveness"] == pytest.approx(result["p50_ms"] / liveness["p50_ms"], abs=0.01)
    # Every row is back where it was; each request left its STATUS_CHANGE event.
    assert dict(LeadOffer.objects.filter(pk__in=before).values_list("id", "status")) == before
    moved = LeadEvent.objects.filter(event_type=LeadEventType.STATUS_CHANGE)
    assert moved.count() == 20 + result["extra"]["moved_back_after_the_run"]
    assert set(moved.values_list("lead_offer__tenant_id", flat=True)) == {whale_id}


def test_sessions_follow_the_cursor_with_a_token_per_user(dataset, live_server, tmp_path):
    _liveness, result = run_bench(
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
        "health.live",
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


# The overhead arithmetic, the table and the JSON, on results built from known latencies (no server).


def load_of(*latencies_ms: float) -> LoadResult:
    return LoadResult(
        latencies_s=[ms / 1000 for ms in latencies_ms], statuses=Counter({200: len(latencies_ms)}), wall_s=1.0
    )


def read_scenario(name: str, *, timed_sql: bool, target_x: float | None) -> Scenario:
    request = HttpRequest("GET", f"/{name}", {})
    return Scenario(
        name, name, "route", [request], NO_TARGET, request if timed_sql else None, overhead_target_x=target_x
    )


def sample_results() -> list[bench_report.ScenarioResult]:
    """Liveness p50 2.0 ms; a list 9.5 ms of which 2.0 ms SQL (7.5 ms overhead, 3.75×, over its 3×);
    a cached read 3.0 ms (1.5×, within 2×); a read whose SQL could not be timed; an ack; end to end."""
    ack = bench_report.measured_result(
        name="webhook.ack", description="ack", load=load_of(4.0, 5.0, 9.0), targets=NO_TARGET
    )
    end_to_end = bench_report.measured_result(
        name="webhook.end_to_end", description="e2e", load=load_of(100.0), targets=NO_TARGET
    )
    results = [
        bench_report.scenario_result(
            read_scenario("health.live", timed_sql=False, target_x=None),
            load_of(1.0, 2.0, 3.0),
            raw_sql_p50_ms=None,
            raw_sql_statements=None,
        ),
        bench_report.scenario_result(
            read_scenario("leads.first_page", timed_sql=True, target_x=3),
            load_of(9.0, 9.5, 30.0),
            raw_sql_p50_ms=2.0,
            raw_sql_statements=2,
        ),
        bench_report.scenario_result(
            read_scenario("stats.whale.cached", timed_sql=False, target_x=2),
            load_of(3.0),
            raw_sql_p50_ms=None,
            raw_sql_statements=None,
        ),
        bench_report.scenario_result(
            read_scenario("admin.queue", timed_sql=True, target_x=None),
            load_of(6.0),
            raw_sql_p50_ms=None,
            raw_sql_statements=None,
        ),
        bench_report.with_overhead(ack, basis=OverheadBasis.WHOLE_P50, target_x=2),
        bench_report.with_overhead(end_to_end, basis=None, target_x=None),
    ]
    return bench_report.judge_overhead(results, bench_report.liveness_p50_ms(results))


def test_overhead_is_the_api_p50_less_its_sql_or_the_whole_p50():
    assert bench_report.overhead_ms(9.5, 2.0, OverheadBasis.API_MINUS_SQL) == 7.5
    assert bench_report.overhead_ms(9.5, None, OverheadBasis.API_MINUS_SQL) is None
    assert bench_report.overhead_ms(3.0, None, OverheadBasis.WHOLE_P50) == 3.0
    assert bench_report.overhead_ms(6.0, None, OverheadBasis.UPPER_BOUND) == 6.0
    assert bench_report.overhead_ms(float("nan"), None, OverheadBasis.WHOLE_P50) is None
    assert bench_report.overhead_ms(100.0, None, None) is None

    liveness, listing, cached, queue, ack, end_to_end = sample_results()
    assert bench_report.liveness_p50_ms([listing, liveness]) == 2.0
    assert bench_report.liveness_p50_ms([listing]) is None
    assert (liveness.overhead_ms, liveness.overhead_x_liveness, liveness.meets_overhead) == (2.0, 1.0, None)
    assert (listing.overhead_basis, listing.overhead_ms, listing.overhead_x_liveness) == (
        "api-sql",
        7.5,
        3.75,
    )
    assert (listing.overhead_target_x, listing.meets_overhead) == (3, False)
    assert listing.overhead_ratio == 4.75  # the API/SQL ratio is still there
    assert (cached.overhead_basis, cached.overhead_ms, cached.overhead_x_liveness) == ("p50", 3.0, 1.5)
    assert cached.meets_overhead is True
    assert (queue.overhead_basis, queue.overhead_ms, queue.overhead_x_liveness) == ("p50-with-sql", 6.0, 3.0)
    assert queue.meets_overhead is None  # reported, no target
    assert (ack.overhead_ms, ack.overhead_x_liveness, ack.meets_overhead) == (5.0, 2.5, False)
    assert (end_to_end.overhead_ms, end_to_end.overhead_x_liveness, end_to_end.meets_overhead) == (
        None,
        None,
        None,
    )


def test_overhead_at_its_target_meets_it_and_without_liveness_nothing_is_judged():
    at_target = bench_report.scenario_result(
        read_scenario("leads.detail", timed_sql=True, target_x=3),
        load_of(7.0),
        raw_sql_p50_ms=1.0,
        raw_sql_statements=1,
    )
    (judged,) = bench_report.judge_overhead([at_target], 2.0)
    assert (judged.overhead_x_liveness, judged.meets_overhead) == (3.0, True)
    (unjudged,) = bench_report.judge_overhead([at_target], None)
    assert (unjudged.overhead_ms, unjudged.overhead_x_liveness, unjudged.meets_overhead) == (6.0, None, None)
    assert "nothing judged" in bench_report.overhead_summary_line([unjudged])
    assert "not judged: leads.detail" in bench_report.overhead_summary_line([unjudged])


def test_table_markdown_and_json_carry_the_overhead():
    results = sample_results()

    lines = bench_report.table(results).splitlines()
    header = lines[0].split()
    assert {"overhead", "ms", "×", "live", "target"} <= set(header)
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    # … raw SQL p50, API/SQL, met, overhead ms, × live, target ×, met, throughput, met
    assert rows["leads.first_page"][-9:] == ["2.0", "4.75", "-", "7.5", "3.8", "3", "FAIL", "-", "-"]
    assert rows["stats.whale.cached"][-6:] == ["3.0", "1.5", "2", "pass", "-", "-"]
    assert rows["admin.queue"][-6:] == ["≤6.0", "3.0", "-", "-", "-", "-"]
    assert rows["webhook.end_to_end"][-6:] == ["-", "-", "-", "-", "-", "-"]

    summary = bench_report.overhead_summary_line(results)
    assert summary == (
        "Framework overhead (health.live p50 2.00 ms, measured first): 1 of 3 targets met; "
        "missed: leads.first_page 3.75× > 3×, webhook.ack 2.5× > 2×."
    )
    markdown = bench_report.markdown(results, {"started_at": "now"})
    assert "| overhead ms | × live | target × | met |" in markdown
    assert "| leads.first_page | 9.5 |" in markdown and "| 7.5 | 3.8 | 3 | FAIL |" in markdown
    assert summary in markdown

    document = json.loads(bench_report.json_text(results))
    assert document["liveness_p50_ms"] == 2.0 and document["liveness_p50_ms_after_reads"] is None
    assert document["overhead_targets"] == {
        "met": ["stats.whale.cached"],
        "missed": ["leads.first_page", "webhook.ack"],
        "not_judged": [],
    }
    listing = document["results"][1]
    assert (listing["overhead_ms"], listing["overhead_x_liveness"], listing["overhead_target_x"]) == (
        7.5,
        3.75,
        3,
    )
    assert listing["meets_overhead"] is False


def test_the_summary_names_the_liveness_measured_after_the_reads():
    liveness, *rest = sample_results()
    again = bench_report.ScenarioResult(**{**liveness.as_dict(), "extra": {"p50_ms_after_reads": 2.4}})
    summary = bench_report.overhead_summary_line([again, *rest])
    assert summary.startswith("Framework overhead (health.live p50 2.00 ms, measured first; 2.40 ms after")
    assert json.loads(bench_report.json_text([again, *rest]))["liveness_p50_ms_after_reads"] == 2.4
