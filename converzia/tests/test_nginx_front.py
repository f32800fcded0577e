"""nginx in front of gunicorn (deploy/nginx/converzia.conf, docs/performance.md "Slow clients").

A real gunicorn (2 sync workers, production settings, the test database) behind the rendered nginx on
free ports: slow clients do not stall health or the webhook through nginx, and do stall gunicorn
alone (so this test can fail); oversized requests are refused by nginx in the API's JSON error shape;
a missing app is 503 `unavailable`; the client address the app sees cannot be forged. Timing bounds
are generous (shared CI machines); the 100 ms figure is the command's (`manage.py slow_clients`).
Skipped only when the nginx binary is absent (CI installs it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from converzia import gunicorn_conf
from converzia.bench.nginx import TEMPLATE, LocalNginx, nginx_binary, render_server_config
from converzia.bench.slow_clients import slow_clients_measure
from converzia.devstack_servers import stop_process
from leads.models import InboxChange, InboxEvent

# The server uses the test database (pytest-django creates it only for a session with django_db tests);
# the tests themselves touch it only through the server.
pytestmark = pytest.mark.django_db

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_SECRET = "nginx-front-test-secret"

needs_nginx = pytest.mark.skipif(
    nginx_binary() is None, reason="nginx is not installed (apt-get install -y nginx; CI installs it)"
)


# --- The configuration agrees with the app (no nginx needed) --------------------------------------


def directive(name: str) -> str:
    match = re.search(rf"^\s*{name}\s+([^;]+);", TEMPLATE.read_text(), re.MULTILINE)
    assert match is not None, f"{name} is missing from {TEMPLATE}"
    return match[1].strip()


def nginx_size(value: str) -> int:
    units = {"k": 1024, "m": 1024 * 1024}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].lower() in units else int(value)


def test_the_body_limit_is_the_webhook_limit():
    assert nginx_size(directive("client_max_body_size")) == settings.META_WEBHOOK_MAX_BODY_BYTES
    assert f'"max_bytes": {settings.META_WEBHOOK_MAX_BODY_BYTES}' in TEMPLATE.read_text()


def test_nginx_refuses_long_lines_before_gunicorn_would():
    count, size = directive("large_client_header_buffers").split()
    line_limit = nginx_size(size)

    assert line_limit < gunicorn_conf.limit_request_line
    assert line_limit < gunicorn_conf.limit_request_field_size
    # nginx accepts at most 1,000 header lines and adds X-Forwarded-For/-Proto and X-Request-ID.
    assert gunicorn_conf.limit_request_fields >= 1000 + 3
    assert f'"max_bytes": {line_limit}' in TEMPLATE.read_text()
    assert f'"max_total_header_bytes": {int(count) * line_limit}' in TEMPLATE.read_text()


def test_every_render_marker_is_replaced_and_none_is_left_out():
    rendered = render_server_config(
        TEMPLATE.read_text(),
        {"upstream": "server 127.0.0.1:1;", "listen": "listen 127.0.0.1:2;", "access_log": "access_log off;"},
    )

    assert not re.search(r";\s*# render:", rendered)
    assert "    listen 127.0.0.1:2;" in rendered
    with pytest.raises(RuntimeError, match="no replacement"):
        render_server_config(TEMPLATE.read_text(), {"upstream": "server 127.0.0.1:1;"})
    with pytest.raises(RuntimeError, match="no `render:` line"):
        render_server_config(
            TEMPLATE.read_text(),
            {"upstream": "a;", "listen": "b;", "access_log": "c;", "ssl": "d;"},
        )


@needs_nginx
def test_the_rendered_configuration_passes_nginx_t():
    nginx = LocalNginx(upstream="127.0.0.1:9")
    try:
        nginx.check()
    finally:
        nginx.stop()


# --- A real gunicorn behind a real nginx ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url() -> str:
    db = connection.settings_dict
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@dataclass
class Stack:
    app_url: str
    nginx: LocalNginx
    log_path: Path

    @property
    def url(self) -> str:
        return self.nginx.url


def wait_for_health(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/api/health/live", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "gunicorn did not start"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Stack]:
    """gunicorn (production settings, the test database) and nginx in front, for this module. The
    rows the webhook POSTs commit (inbox events, their drain jobs) are deleted afterwards."""
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx; CI installs it)")
    directory = tmp_path_factory.mktemp("nginx-front")
    with django_db_blocker.unblock():
        url = database_url()
        last_event = InboxEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        with connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(max(id), 0) FROM procrastinate_jobs")
            last_job = cursor.fetchone()[0]
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "converzia.settings.production",
        "DATABASE_URL": url,
        "SECRET_KEY": f"nginx-front-{uuid.uuid4().hex}",
        "META_APP_SECRET": APP_SECRET,
        "META_WEBHOOK_VERIFY_TOKEN": "nginx-front-verify",
        "SECURE_SSL_REDIRECT": "false",
        "CACHE_KEY_PREFIX": f"nginx-front-{uuid.uuid4().hex[:8]}",
        # As deployed behind nginx: one proxy in front (deploy/README.md).
        "NUM_PROXIES": "1",
        "METRICS_ALLOWED_IPS": "127.0.0.1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = directory / "gunicorn.log"
    with log_path.open("wb") as log:
        # Into a file: an unread pipe fills up with log lines and blocks the workers.
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "converzia.wsgi:application", "--config"]
            + ["python:converzia.gunicorn_conf", "--bind", f"127.0.0.1:{port}"]
            + ["--workers", "2", "--no-control-socket"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    nginx = None
    try:
        app_url = f"http://127.0.0.1:{port}"
        wait_for_health(app_url, server, log_path)
        nginx = LocalNginx(upstream=f"127.0.0.1:{port}").start()
        nginx.wait_upstream()
        yield Stack(app_url=app_url, nginx=nginx, log_path=log_path)
    finally:
        if nginx is not None:
            nginx.stop()
        stop_process(server.pid, popen=server, first=signal.SIGTERM, then=signal.SIGKILL, timeout=15)
        with django_db_blocker.unblock():
            InboxChange.objects.filter(event_id__gt=last_event).delete()
            InboxEvent.objects.filter(pk__gt=last_event).delete()
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM procrastinate_jobs WHERE id > %s", [last_job])


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"].split(";")[0] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]


@needs_nginx
def test_slow_clients_do_not_stall_health_or_the_webhook_behind_nginx(stack):
    result = slow_clients_measure(url=stack.url, slow=20, seconds=4, secret=APP_SECRET, probe_timeout_s=5)

    assert [phase.name for phase in result.phases] == ["baseline", "slow body", "slow headers"]
    for phase in result.phases:
        assert phase.health.requests >= 10 and phase.health.failures == 0, phase
        assert phase.health.p99_ms < 1000, phase
        assert phase.webhook is not None and phase.webhook.failures == 0, phase
        assert phase.webhook.p99_ms < 1000, phase
    for phase in result.phases[1:]:
        assert phase.slow_open_min == 20, phase


@needs_nginx
def test_the_same_slow_clients_stall_gunicorn_alone(stack):
    result = slow_clients_measure(
        url=stack.app_url, slow=20, seconds=3, secret=None, kinds=["body"], probe_timeout_s=1
    )

    baseline, slow = result.phases
    assert baseline.health.failures == 0
    # Both sync workers sit in a slow client's read: health gets no answer within the probe timeout.
    assert slow.health.failures > 0
    assert slow.health.p99_ms >= 1000
    assert not result.ok


@needs_nginx
def test_a_5000_character_query_is_a_json_414(stack):
    response = httpx.get(f"{stack.url}/api/portal/leads", params={"q": "a" * 5000}, timeout=10)

    assert response.status_code == 414
    error = error_of(response)
    assert (error["code"], error["details"]) == ("invalid_input", {"max_bytes": 4096})


@needs_nginx
def test_a_20_kb_header_is_a_json_431(stack):
    response = httpx.get(f"{stack.url}/api/health/live", headers={"X-Big": "b" * 20_000}, timeout=10)

    assert response.status_code == 431
    assert error_of(response)["code"] == "invalid_input"


@needs_nginx
def test_many_small_headers_never_reach_gunicorns_html_error(stack):
    """Up to nginx's 1,000 header lines reach the app; more are nginx's JSON 431."""
    headers = [(f"x-h{index}", "v") for index in range(990)]
    passed = httpx.get(f"{stack.url}/api/health/live", headers=headers, timeout=10)
    refused = httpx.get(f"{stack.url}/api/health/live", headers=[*headers, *headers[:20]], timeout=10)

    assert passed.status_code == 200
    assert refused.status_code == 431
    error_of(refused)


def raw_exchange(url: str, head: bytes, body_part: bytes) -> bytes:
    """Send a request head and part of a body, then read whatever answer comes (nginx answers a too
    large declared body before reading it)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body_part)
        answer = b""
        # Until the whole answer is in (nginx then lingers for the rest of the body, and resets).
        while not _complete(answer) and (chunk := sock.recv(65536)):
            answer += chunk
    return answer


def _complete(answer: bytes) -> bool:
    head, separator, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return bool(separator) and length is not None and len(body) >= int(length[1])


@needs_nginx
def test_an_oversized_body_is_a_json_413_with_the_clients_request_id(stack):
    limit = settings.META_WEBHOOK_MAX_BODY_BYTES
    head = (
        "POST /api/webhooks/meta-leads HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Request-ID: client-chosen-id-413\r\nContent-Length: {limit + 1}\r\nConnection: close\r\n\r\n"
    ).encode()

    answer = raw_exchange(stack.url, head, b"{" * 1024)

    status_line, _, rest = answer.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 413 ")
    assert b"Content-Type: application/json" in header_block
    assert b"X-Request-ID: client-chosen-id-413" in header_block
    assert json.loads(body) == {
        "error": {
            "code": "invalid_input",
            "message": f"The body exceeds {limit} bytes.",
            "details": {"max_bytes": limit},
            "request_id": "client-chosen-id-413",
        }
    }


@needs_nginx
def test_the_request_id_nginx_picks_is_the_one_the_app_uses(stack):
    chosen = httpx.get(f"{stack.url}/api/health/live", headers={"X-Request-ID": "client-id-0001"}, timeout=10)
    unsafe = httpx.get(f"{stack.url}/api/health/live", headers={"X-Request-ID": 'bad"id'}, timeout=10)

    assert chosen.headers["x-request-id"] == "client-id-0001"
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])
    assert unsafe.headers["x-request-id"] in stack.nginx.access_log.read_text()


@needs_nginx
def test_a_forged_x_forwarded_for_does_not_reach_the_app(stack):
    """NUM_PROXIES=1 and METRICS_ALLOWED_IPS=127.0.0.1: through nginx the app sees the real client,
    whatever X-Forwarded-For it claims; straight to gunicorn the forged entry would be believed."""
    through_nginx = httpx.get(f"{stack.url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
    straight = httpx.get(f"{stack.app_url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)

    assert through_nginx.status_code == 200
    assert straight.status_code == 401


@needs_nginx
def test_an_app_that_is_down_is_a_json_503_with_retry_after():
    with LocalNginx(upstream=f"127.0.0.1:{free_port()}") as nginx:
        response = httpx.post(f"{nginx.url}/api/webhooks/meta-leads", content=b"{}", timeout=10)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert error_of(response)["code"] == "unavailable"
