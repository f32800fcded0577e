"""`GET /metrics` (API.md "Metrics"): every family named there, request counts by route (the URL
pattern, never the raw path), access for staff or allow-listed addresses only, and the sum over
gunicorn workers in multiprocess mode."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from django.db import connection
from django.test import override_settings
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from converzia.db.timeouts import guarded
from converzia.errors import QueryTimeout
from converzia.tests.factories import UserFactory

pytestmark = pytest.mark.django_db

REPO_ROOT = Path(__file__).resolve().parents[2]
ROUTE = "api/health/live"

FAMILIES = (
    "converzia_http_request_duration_seconds",
    "converzia_http_responses_total",
    "converzia_db_query_duration_seconds",
    "converzia_db_query_timeouts_total",
    "converzia_cache_requests_total",
    "converzia_webhook_requests_total",
    "converzia_deliveries_total",
    "converzia_ledger_entries_total",
    "converzia_queue_pending_events",
    "converzia_queue_oldest_pending_age_seconds",
    "converzia_queue_due_deliveries",
    "converzia_queue_oldest_due_age_seconds",
    "converzia_stats_view_age_seconds",
)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.fixture
def staff_client(client_for):
    return client_for(UserFactory(is_staff=True))


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def test_every_named_family_is_exposed(staff_client):
    text = scrape(staff_client)

    for family in FAMILIES:
        assert f"# TYPE {family} " in text, family
    assert sample(text, "converzia_scrape_probe_up", probe="queue") == 1
    assert sample(text, "converzia_scrape_probe_up", probe="stats_view") == 1


def test_a_request_is_counted_under_its_route_and_method(staff_client, api_client):
    route = "api/health/live"
    before = scrape(staff_client)

    api_client.get("/api/health/live")
    api_client.get("/api/health/live?unknown=1")  # 400

    after = scrape(staff_client)
    count = "converzia_http_request_duration_seconds_count"
    assert (
        sample(after, count, route=route, method="GET") - sample(before, count, route=route, method="GET")
        == 2
    )
    responses = "converzia_http_responses_total"
    for status_class in ("2xx", "4xx"):
        labels = {"route": route, "method": "GET", "status_class": status_class}
        assert sample(after, responses, **labels) - sample(before, responses, **labels) == 1


def test_routes_are_url_patterns_not_raw_paths(staff_client):
    lead_offer_id = uuid.uuid4()
    staff_client.post(f"/api/ops/lead-offers/{lead_offer_id}/transition", {"to": "ENGAGED"}, format="json")
    staff_client.get("/not-a-route-at-all")

    text = scrape(staff_client)

    assert str(lead_offer_id) not in text
    assert "/not-a-route-at-all" not in text
    routes = {
        s.labels["route"]
        for family in text_string_to_metric_families(text)
        if family.name == "converzia_http_responses"
        for s in family.samples
    }
    assert any(r.startswith("api/ops/lead-offers/<") and r.endswith(">/transition") for r in routes), routes
    assert "unmatched" in routes


def test_query_timeouts_and_query_time_are_counted_by_query_name(staff_client):
    before = scrape(staff_client)

    with pytest.raises(QueryTimeout):
        with guarded("tests.metrics.sleep", timeout_ms=50, retries=0), connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(1)")

    after = scrape(staff_client)
    timeouts = "converzia_db_query_timeouts_total"
    assert (
        sample(after, timeouts, query="tests.metrics.sleep")
        - sample(before, timeouts, query="tests.metrics.sleep")
        == 1
    )
    assert sample(after, "converzia_db_query_duration_seconds_count", query="tests.metrics.sleep") >= 1


def test_anonymous_clients_outside_the_allow_list_are_refused(api_client):
    response = api_client.get("/metrics", REMOTE_ADDR="203.0.113.9")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_signed_in_non_staff_are_forbidden(client_for):
    response = client_for(UserFactory()).get("/metrics", REMOTE_ADDR="203.0.113.9")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_staff_are_allowed_from_anywhere(staff_client):
    assert staff_client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 200


@override_settings(METRICS_ALLOWED_IPS=["10.20.0.0/16", "::1"])
@pytest.mark.parametrize(("address", "status"), [("10.20.3.4", 200), ("::1", 200), ("10.21.0.1", 401)])
def test_allow_listed_addresses_need_no_login(api_client, address, status):
    assert api_client.get("/metrics", REMOTE_ADDR=address).status_code == status


@override_settings(METRICS_ALLOWED_IPS=["10.20.0.0/16"])
def test_x_forwarded_for_is_ignored_without_trusted_proxies(api_client):
    response = api_client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="10.20.3.4")

    assert response.status_code == 401


def test_behind_a_trusted_proxy_the_forwarded_client_address_counts(api_client, settings):
    settings.METRICS_ALLOWED_IPS = ["10.20.0.0/16"]
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}

    allowed = api_client.get("/metrics", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="1.2.3.4, 10.20.3.4")
    spoofed = api_client.get("/metrics", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="10.20.3.4, 1.2.3.4")

    assert allowed.status_code == 200
    assert spoofed.status_code == 401


# --- multiprocess mode: a real gunicorn with two workers ------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def live_requests_by_worker(directory: Path) -> dict[str, float]:
    """GET /api/health/live requests each worker process has recorded in its own file (named by pid)."""
    served: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(str(path)):
            _family, name, labels, _help = json.loads(key)
            if name == "converzia_http_responses_total" and labels.get("route") == ROUTE:
                served[path.stem] = served.get(path.stem, 0) + value
    return served


def test_multiprocess_mode_sums_the_workers(tmp_path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_999999.db"
    stale.write_bytes(b"left over by a previous run")
    port = free_port()
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "converzia.settings.test",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "METRICS_ALLOWED_IPS": "127.0.0.1",
        # The test database: the scrape-time probes read its (empty) queue.
        "DATABASE_URL": (
            f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        ),
    }
    log_path = tmp_path / "gunicorn.log"
    log_file = log_path.open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "converzia.wsgi:application",
            "--config",
            "python:converzia.gunicorn_conf",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--no-control-socket",
        ],
        cwd=REPO_ROOT,
        env=env,
        # Into a file: an unread pipe fills up with log lines and blocks the workers.
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/health/live", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.2)
        assert not stale.exists(), "on_starting must empty the metrics directory"

        count = "converzia_http_request_duration_seconds_count"
        before = sample(httpx.get(f"{base}/metrics", timeout=10).text, count, route=ROUTE, method="GET")

        # Concurrent requests on fresh connections, so that one worker is busy while the other accepts,
        # until both have served some.
        def live() -> int:
            with httpx.Client(headers={"Connection": "close"}) as client:
                return client.get(f"{base}/api/health/live", timeout=10).status_code

        sent = 0
        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(max_workers=8) as pool:
            while len(live_requests_by_worker(metrics_dir)) < 2:
                assert set(pool.map(lambda _: live(), range(16))) == {200}
                sent += 16
                assert time.monotonic() < deadline, "only one worker ever answered"

        text = httpx.get(f"{base}/metrics", timeout=10).text
        by_worker = live_requests_by_worker(metrics_dir)
        assert len(by_worker) == 2 and all(served > 0 for served in by_worker.values())
        # Whichever worker answered the scrape, it reports both workers' requests added up.
        assert sample(text, count, route=ROUTE, method="GET") == before + sent
        responses = sample(
            text, "converzia_http_responses_total", route=ROUTE, method="GET", status_class="2xx"
        )
        assert responses == sum(by_worker.values()) == before + sent
        assert sample(text, "converzia_scrape_probe_up", probe="queue") == 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
        log_file.close()
