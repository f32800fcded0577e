"""Outbound webhooks: Standard Webhooks signing, the private-address guard, timeouts, concurrency.

Receivers are real local HTTP servers (pytest-httpserver on 127.0.0.1). Nothing here reaches the
internet: public addresses are only checked with `resolve_checked` / `address_is_public`.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from werkzeug import Request, Response

from deliveries import outbound
from deliveries.models import new_webhook_secret
from deliveries.outbound import AddressRefused, OutboundRequest

BODY = json.dumps({"type": "lead.ready", "data": {"lead": {"name": "Ana"}}}).encode()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown so a handler that waits on it never outlives its test."""
    event = threading.Event()
    yield event
    event.set()


def signed_request(
    url: str, *, secret: str, message_id: str = "msg_test_1", body: bytes = BODY
) -> OutboundRequest:
    headers = outbound.signed_headers(secret=secret, message_id=message_id, body=body)
    return OutboundRequest(url=url, body=body, headers=headers)


def send_one(request: OutboundRequest, **kwargs) -> outbound.OutboundResult:
    (result,) = outbound.send([request], **kwargs)
    return result


# --- signing -------------------------------------------------------------------------------------


def test_a_send_arrives_with_headers_that_verify_with_standardwebhooks(receiver):
    secret = new_webhook_secret()
    receiver.expect_oneshot_request("/hook", method="POST").respond_with_data("ok")

    result = send_one(signed_request(receiver.url_for("/hook"), secret=secret, message_id="msg_abc"))

    assert result.status_code == 200
    assert result.succeeded is True
    assert result.error == ""
    assert result.refused is False
    ((request, _response),) = receiver.log
    assert request.get_data() == BODY
    assert request.headers["webhook-id"] == "msg_abc"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == outbound.USER_AGENT
    assert Webhook(secret).verify(request.get_data(), dict(request.headers)) == json.loads(BODY)


def test_a_signature_made_with_another_secret_does_not_verify(receiver):
    receiver.expect_oneshot_request("/hook").respond_with_data("ok")

    send_one(signed_request(receiver.url_for("/hook"), secret=new_webhook_secret()))

    ((request, _response),) = receiver.log
    with pytest.raises(Exception, match="No matching signature found"):
        Webhook(new_webhook_secret()).verify(request.get_data(), dict(request.headers))


def test_two_sends_of_one_message_carry_the_same_webhook_id_and_each_verifies(receiver):
    secret = new_webhook_secret()
    receiver.expect_request("/hook").respond_with_data("", status=500)
    first = signed_request(
        receiver.url_for("/hook"),
        secret=secret,
        message_id="msg_0123",
    )
    # A retry is signed again later: new timestamp and signature, same id.
    retry_headers = outbound.signed_headers(
        secret=secret, message_id="msg_0123", body=BODY, sent_at=datetime.now(UTC) + timedelta(seconds=7)
    )
    retry = OutboundRequest(url=first.url, body=BODY, headers=retry_headers)

    send_one(first)
    send_one(retry)

    (first_seen, _), (retry_seen, _) = receiver.log
    assert first_seen.headers["webhook-id"] == retry_seen.headers["webhook-id"] == "msg_0123"
    assert first_seen.headers["webhook-timestamp"] != retry_seen.headers["webhook-timestamp"]
    assert first_seen.headers["webhook-signature"] != retry_seen.headers["webhook-signature"]
    for seen in (first_seen, retry_seen):
        Webhook(secret).verify(seen.get_data(), dict(seen.headers))


def test_signed_headers_follow_the_standard_webhooks_format():
    sent_at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

    headers = outbound.signed_headers(
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        message_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        body=b'{"test": 2432232314}',
        sent_at=sent_at,
    )

    assert headers["webhook-id"] == "msg_p5jXN8AQM9LWM0D4loKWxJek"
    assert headers["webhook-timestamp"] == str(int(sent_at.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["webhook-signature"] == Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").sign(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", sent_at, '{"test": 2432232314}'
    )


# --- the address guard -----------------------------------------------------------------------------

NON_PUBLIC_LITERALS = [
    pytest.param("127.0.0.1", id="_case_loopback_v4"),
    pytest.param("::1", id="_case_loopback_v6"),
    pytest.param("10.1.2.3", id="_case_private_10"),
    pytest.param("172.16.0.1", id="_case_private_172"),
    pytest.param("192.168.1.1", id="_case_private_192"),
    pytest.param("169.254.169.254", id="_case_link_local_metadata"),
    pytest.param("100.64.0.1", id="_case_carrier_grade_nat"),
    pytest.param("224.0.0.1", id="_case_multicast"),
    pytest.param("::ffff:127.0.0.1", id="_case_v4_mapped_loopback"),
    pytest.param("0.0.0.0", id="_case_unspecified"),
    pytest.param("fc00::1", id="_case_unique_local_v6"),
    pytest.param("fe80::1", id="_case_link_local_v6"),
]


@pytest.mark.parametrize("address", NON_PUBLIC_LITERALS)
def test_non_public_addresses_are_refused_when_private_networks_are_not_allowed(address):
    assert outbound.address_is_public(ipaddress.ip_address(address)) is False
    with pytest.raises(AddressRefused, match="non-public address"):
        outbound.resolve_checked(address, 443, allow_private=False)


@pytest.mark.parametrize("address", NON_PUBLIC_LITERALS)
def test_non_public_addresses_are_allowed_when_private_networks_are(address):
    checked = outbound.resolve_checked(address, 443, allow_private=True)

    assert ipaddress.ip_address(checked) == ipaddress.ip_address(address)


def test_a_name_that_resolves_to_loopback_is_refused():
    assert socket.getaddrinfo("localhost", 80)  # the premise: localhost resolves here

    with pytest.raises(AddressRefused, match="localhost resolves to a non-public address"):
        outbound.resolve_checked("localhost", 80, allow_private=False)


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("93.184.216.34", id="_case_v4"),
        pytest.param("2606:2800:220:1:248:1893:25c8:1946", id="_case_v6"),
    ],
)
def test_public_literals_are_allowed_without_any_lookup(address):
    assert outbound.address_is_public(ipaddress.ip_address(address)) is True
    assert outbound.resolve_checked(address, 443, allow_private=False) == address


def test_an_unresolvable_name_is_refused_even_when_private_networks_are_allowed():
    with pytest.raises(AddressRefused, match="does not resolve"):
        outbound.resolve_checked("receiver.invalid", 443, allow_private=True)


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.1", id="_case_literal"),
        pytest.param("localhost", id="_case_name"),
        pytest.param("[::ffff:127.0.0.1]", id="_case_v4_mapped"),
    ],
)
def test_a_refused_send_never_reaches_the_local_receiver(receiver, host):
    receiver.expect_request("/hook").respond_with_data("ok")
    url = f"http://{host}:{receiver.port}/hook"

    result = send_one(signed_request(url, secret=new_webhook_secret()), allow_private=False)

    assert result.refused is True
    assert result.status_code is None
    assert result.succeeded is False
    assert result.error.startswith("refused: ")
    assert "non-public address" in result.error
    assert receiver.log == []


def test_a_refused_send_does_not_even_open_a_connection():
    # A bare listening socket: any connect attempt, even one that sends nothing, lands in its backlog.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    try:
        port = listener.getsockname()[1]
        result = send_one(
            signed_request(f"http://127.0.0.1:{port}/hook", secret=new_webhook_secret()), allow_private=False
        )

        assert result.refused is True
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


@pytest.mark.parametrize("address", ["10.1.2.3", "169.254.169.254", "[fe80::1]"])
def test_sends_to_private_addresses_are_refused_before_connecting(address):
    result = send_one(
        signed_request(f"https://{address}/hook", secret=new_webhook_secret()), allow_private=False
    )

    assert result.refused is True
    assert result.status_code is None


def test_with_private_networks_allowed_the_send_arrives_signed_with_the_original_host_header(receiver):
    if outbound.resolve_checked("localhost", receiver.port, allow_private=True) != "127.0.0.1":
        pytest.skip("localhost does not resolve to 127.0.0.1 first on this machine")
    secret = new_webhook_secret()
    receiver.expect_oneshot_request("/hook", query_string="a=1").respond_with_data("ok")
    url = f"http://localhost:{receiver.port}/hook?a=1"

    result = send_one(signed_request(url, secret=secret), allow_private=True)

    assert result.status_code == 200
    assert result.refused is False
    ((request, _response),) = receiver.log
    # The connection went to the checked address; the receiver still sees the name it was given.
    assert request.headers["host"] == f"localhost:{receiver.port}"
    Webhook(secret).verify(request.get_data(), dict(request.headers))


def test_the_settings_decide_when_the_caller_does_not(receiver, settings):
    receiver.expect_request("/hook").respond_with_data("ok")
    request = signed_request(receiver.url_for("/hook"), secret=new_webhook_secret())

    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False
    refused = send_one(request)
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = True
    sent = send_one(request)

    assert refused.refused is True
    assert sent.status_code == 200
    assert len(receiver.log) == 1


# --- url_problems ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allow_private", "problem"),
    [
        pytest.param(
            "http://93.184.216.34/hook", False, "The URL must use https.", id="_case_http_in_production"
        ),
        pytest.param("ftp://93.184.216.34/hook", True, "The URL must use https.", id="_case_ftp"),
        pytest.param(
            "https://user:pw@93.184.216.34/hook", False, "Credentials in the URL", id="_case_credentials"
        ),
        pytest.param(
            "https://93.184.216.34/hook#top", False, "must not have a fragment", id="_case_fragment"
        ),
        pytest.param("https:///hook", False, "The URL has no host.", id="_case_no_host"),
        pytest.param("https://93.184.216.34:99999/hook", False, "port is not valid", id="_case_bad_port"),
        pytest.param("https://93.184.216.34:http/hook", False, "port is not valid", id="_case_named_port"),
        pytest.param("https://receiver.invalid/hook", True, "does not resolve", id="_case_unresolvable"),
        pytest.param("https://127.0.0.1/hook", False, "non-public address", id="_case_loopback"),
        pytest.param("https://localhost/hook", False, "non-public address", id="_case_localhost"),
        pytest.param("https://[::1]:8443/hook", False, "non-public address", id="_case_loopback_v6"),
    ],
)
def test_url_problems_explain_what_is_wrong(url, allow_private, problem):
    problems = outbound.url_problems(url, allow_private=allow_private)

    assert len(problems) == 1
    assert problem in problems[0]


@pytest.mark.parametrize(
    ("url", "allow_private"),
    [
        pytest.param("https://93.184.216.34/hooks/converzia?x=1", False, id="_case_public_https"),
        pytest.param("https://[2606:2800:220:1:248:1893:25c8:1946]:8443/hook", False, id="_case_public_v6"),
        pytest.param("http://127.0.0.1:8000/hook", True, id="_case_local_http_in_development"),
        pytest.param("http://localhost:8000/hook", True, id="_case_localhost_in_development"),
    ],
)
def test_url_problems_are_empty_for_usable_urls(url, allow_private):
    assert outbound.url_problems(url, allow_private=allow_private) == []


def test_url_problems_lists_every_cheap_problem_at_once():
    problems = outbound.url_problems("http://u:p@93.184.216.34/#x", allow_private=False)

    assert problems == [
        "The URL must use https.",
        "Credentials in the URL are not allowed; the signature authenticates us.",
        "The URL must not have a fragment.",
    ]


# --- receivers' answers ----------------------------------------------------------------------------


def test_a_receiver_slower_than_the_timeout_is_reported_as_timed_out(receiver, release, settings):
    settings.DELIVERY_TIMEOUT_S = 0.5

    def slow(request: Request) -> Response:
        release.wait(10)
        return Response("too late")

    receiver.expect_request("/slow").respond_with_handler(slow)

    result = send_one(signed_request(receiver.url_for("/slow"), secret=new_webhook_secret()))

    assert result.status_code is None
    assert result.succeeded is False
    assert result.refused is False
    assert "timed out" in result.error


@pytest.mark.parametrize(
    ("status", "headers", "expected_retry_after"),
    [
        pytest.param(500, {}, None, id="_case_server_error"),
        pytest.param(410, {}, None, id="_case_gone"),
        pytest.param(429, {"Retry-After": "120"}, 120, id="_case_rate_limited_seconds"),
        pytest.param(503, {"Retry-After": "0"}, 0, id="_case_unavailable_zero"),
        pytest.param(429, {"Retry-After": "9999999"}, outbound.RETRY_AFTER_MAX_S, id="_case_capped"),
        pytest.param(429, {"Retry-After": "soon"}, None, id="_case_garbage"),
    ],
)
def test_the_status_and_retry_after_are_reported(receiver, status, headers, expected_retry_after):
    receiver.expect_request("/hook").respond_with_data("nope", status=status, headers=headers)

    result = send_one(signed_request(receiver.url_for("/hook"), secret=new_webhook_secret()))

    assert result.status_code == status
    assert result.succeeded is False
    assert result.error == ""
    assert result.retry_after_s == expected_retry_after
    assert result.response_excerpt == "nope"


def test_retry_after_as_an_http_date_becomes_seconds_from_now(receiver):
    in_an_hour = email.utils.format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    receiver.expect_request("/hook").respond_with_data("", status=429, headers={"Retry-After": in_an_hour})

    result = send_one(signed_request(receiver.url_for("/hook"), secret=new_webhook_secret()))

    assert result.status_code == 429
    # The header has one-second resolution and the clock moves on: a bound, not a timing assertion.
    assert 3590 <= result.retry_after_s <= 3600


def test_retry_after_in_the_past_means_now():
    yesterday = email.utils.format_datetime(datetime.now(UTC) - timedelta(days=1), usegmt=True)

    assert outbound.parse_retry_after(yesterday) == 0
    assert outbound.parse_retry_after(None) is None
    assert outbound.parse_retry_after("") is None


def test_the_response_excerpt_is_capped_at_512_bytes(receiver):
    receiver.expect_request("/hook").respond_with_data("x" * 100_000, status=400)

    result = send_one(signed_request(receiver.url_for("/hook"), secret=new_webhook_secret()))

    assert result.status_code == 400
    assert result.response_excerpt == "x" * outbound.RESPONSE_EXCERPT_BYTES


def test_redirects_are_not_followed(receiver):
    receiver.expect_request("/hook").respond_with_data(
        "", status=302, headers={"Location": receiver.url_for("/elsewhere")}
    )
    receiver.expect_request("/elsewhere").respond_with_data("ok")

    result = send_one(signed_request(receiver.url_for("/hook"), secret=new_webhook_secret()))

    assert result.status_code == 302
    assert result.succeeded is False
    assert [request.path for request, _ in receiver.log] == ["/hook"]


def test_a_closed_port_is_a_connection_error_not_a_status():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now

    result = send_one(signed_request(f"http://127.0.0.1:{port}/hook", secret=new_webhook_secret()))

    assert result.status_code is None
    assert result.refused is False
    assert result.error != ""
    assert "timed out" not in result.error


def test_many_sends_to_a_slow_receiver_are_in_flight_together(receiver, release):
    in_flight = 0
    most_in_flight = 0
    lock = threading.Lock()

    def slow(request: Request) -> Response:
        nonlocal in_flight, most_in_flight
        with lock:
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
        release.wait(0.2)  # each answer takes 200 ms
        with lock:
            in_flight -= 1
        return Response("ok")

    receiver.expect_request("/slow").respond_with_handler(slow)
    secret = new_webhook_secret()
    requests = [
        signed_request(receiver.url_for("/slow"), secret=secret, message_id=f"msg_{n}") for n in range(50)
    ]

    results = outbound.send(requests)

    assert [result.status_code for result in results] == [200] * 50
    assert len(receiver.log) == 50
    # Sequential sends would never overlap; concurrent ones pile up at the receiver together.
    assert most_in_flight > 10


def test_results_come_back_in_the_order_of_the_requests(receiver):
    for status in (201, 202, 500):
        receiver.expect_request(f"/s{status}").respond_with_data("", status=status)
    secret = new_webhook_secret()

    results = outbound.send(
        [signed_request(receiver.url_for(f"/s{status}"), secret=secret) for status in (500, 201, 202)]
    )

    assert [result.status_code for result in results] == [500, 201, 202]
    assert outbound.send([]) == []


def test_duration_is_measured(receiver):
    receiver.expect_request("/hook").respond_with_handler(
        lambda request: (time.sleep(0.05), Response("ok"))[1]
    )

    result = send_one(signed_request(receiver.url_for("/hook"), secret=new_webhook_secret()))

    assert result.duration_ms >= 50


def test_each_host_is_resolved_once_per_batch_and_a_hung_resolver_is_bounded(
    httpserver, monkeypatch, settings
):
    """The OS resolver is replaced (it is not ours to run): one host answers at once, one never does."""
    settings.DELIVERY_CONNECT_TIMEOUT_S = 0.3
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    calls: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        calls.append(host)
        if host == "hung.test":
            time.sleep(2)
        return real_getaddrinfo("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", getaddrinfo)
    requests = [
        outbound.OutboundRequest(url=f"http://{host}:{httpserver.port}/hook", body=b"{}", headers={})
        for host in ["fine.test"] * 3 + ["hung.test"] * 3
    ]

    results = outbound.send(requests, allow_private=True)

    assert sorted(calls) == ["fine.test", "hung.test"], "one lookup per distinct host"
    assert [r.status_code for r in results[:3]] == [200, 200, 200]
    assert all(r.refused and "did not resolve within 0.3 s" in r.error for r in results[3:])
    assert len(httpserver.log) == 3
