"""The delivery address guard over every spelling of an address (issue 15; TARGETS reliability 10).

Three levels, one decision (`outbound.address_refusal`): the decision itself, configuration time
(`destination_configure`, which resolves the URL's host) and send time (the DNS answers a send
actually connects to). The test settings allow private networks (development), so every test of the
guard turns that off explicitly (`production_guard`), and the development behaviour has its own tests.
DNS answers come from `FakeDNS` put in place of `outbound.resolver`; nothing here reaches the internet.
"""

from __future__ import annotations

import ipaddress

import pytest

from converzia.errors import ErrorCode, InvalidInput
from deliveries import outbound
from deliveries.models import DeliveryDestination
from deliveries.outbound import AddressRefused, EmbeddedIPv4, OutboundRequest
from deliveries.services.destinations import destination_configure, destination_test_send
from deliveries.tests.address_forms import (
    ALLOWED,
    ISSUE_15,
    NUMERIC,
    REFUSED,
    REFUSED_ADDRESSES,
    WRAPPED_PRIVATE,
    WRAPPED_PUBLIC,
    FakeDNS,
    hostname,
)

PUBLIC_URL = "https://93.184.216.34/hook"
WRAPPED = ISSUE_15 + WRAPPED_PRIVATE + WRAPPED_PUBLIC


@pytest.fixture
def production_guard(settings) -> None:
    """The guard as production runs it (the test settings allow private networks, as development)."""
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = False


@pytest.fixture
def dns(monkeypatch) -> FakeDNS:
    """Every lookup the guard makes goes here; no name resolves unless a test gives it answers."""
    fake = FakeDNS()
    monkeypatch.setattr(outbound, "resolver", fake)
    return fake


def address_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(hostname(host))


# --- the decision ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "says"), REFUSED_ADDRESSES)
def test_the_decision_refuses_every_non_public_address_and_says_what_it_reaches(host, says):
    address = address_of(host)

    reason = outbound.address_refusal(address)

    assert reason is not None
    assert says in f"{address} is {reason}"
    assert outbound.address_is_public(address) is False


@pytest.mark.parametrize("host", ALLOWED)
def test_the_decision_allows_native_global_addresses(host):
    assert outbound.address_refusal(address_of(host)) is None
    assert outbound.address_is_public(address_of(host)) is True


@pytest.mark.parametrize(("host", "says"), WRAPPED_PUBLIC)
def test_ipv4_inside_ipv6_is_refused_even_when_that_ipv4_is_public(host, says):
    reason = outbound.address_refusal(address_of(host))

    assert reason is not None
    assert reason.endswith("IPv4 inside IPv6 is never accepted")
    assert says in reason


@pytest.mark.parametrize(
    ("address", "embedded"),
    [
        pytest.param("::ffff:192.0.2.33", [("IPv4-mapped IPv6", "192.0.2.33", "")], id="_case_mapped"),
        pytest.param("::c000:221", [("IPv4-compatible IPv6", "192.0.2.33", "")], id="_case_compatible"),
        pytest.param(
            "::ffff:0:c000:221", [("IPv4-translated IPv6", "192.0.2.33", "")], id="_case_translated"
        ),
        pytest.param(
            "64:ff9b::192.0.2.33", [("NAT64 IPv6 (64:ff9b::/96)", "192.0.2.33", "")], id="_case_nat64"
        ),
        pytest.param(
            "2002:c000:221::1", [("6to4 IPv6 (2002::/16)", "192.0.2.33", "")], id="_case_6to4_bits_16_to_47"
        ),
        # Teredo: the client 192.0.2.45 is stored with every bit inverted (3fff:fdd2).
        pytest.param(
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            [
                ("Teredo IPv6 (2001::/32)", "65.54.227.120", "the Teredo server"),
                ("Teredo IPv6 (2001::/32)", "192.0.2.45", "the Teredo client"),
            ],
            id="_case_teredo",
        ),
        # 64:ff9b:1::/48 may hold the IPv4 where any RFC 6052 layout of /48 or longer puts it.
        pytest.param(
            "64:ff9b:1:c000:2:2100::",
            [
                ("NAT64 local-use IPv6 (64:ff9b:1::/48)", "192.0.2.33", "with a /48 prefix"),
                ("NAT64 local-use IPv6 (64:ff9b:1::/48)", "0.2.33.0", "with a /56 prefix"),
                ("NAT64 local-use IPv6 (64:ff9b:1::/48)", "2.33.0.0", "with a /64 prefix"),
                ("NAT64 local-use IPv6 (64:ff9b:1::/48)", "0.0.0.0", "with a /96 prefix"),
            ],
            id="_case_nat64_local_use",
        ),
        pytest.param("::1", [], id="_case_loopback_is_not_compatible"),
        pytest.param("::", [], id="_case_unspecified_is_not_compatible"),
        pytest.param("2606:2800:220:1:248:1893:25c8:1946", [], id="_case_native"),
        pytest.param("2001:4860:4860::8888", [], id="_case_native_in_2001_but_not_teredo"),
    ],
)
def test_embedded_ipv4_unwraps_each_transition_form(address, embedded):
    assert outbound.embedded_ipv4(ipaddress.IPv6Address(address)) == [
        EmbeddedIPv4(form, ipaddress.IPv4Address(ipv4), role) for form, ipv4, role in embedded
    ]


@pytest.mark.parametrize(
    ("address", "prefix_length"),
    [
        # RFC 6052 §2.4: 192.0.2.33 behind a prefix of each allowed length (the u octet is skipped).
        pytest.param("2001:db8:c000:221::", 32, id="_case_32"),
        pytest.param("2001:db8:1c0:2:21::", 40, id="_case_40"),
        pytest.param("2001:db8:122:c000:2:2100::", 48, id="_case_48"),
        pytest.param("2001:db8:122:3c0:0:221::", 56, id="_case_56"),
        pytest.param("2001:db8:122:344:c0:2:2100:0", 64, id="_case_64"),
        pytest.param("2001:db8:122:344::192.0.2.33", 96, id="_case_96"),
    ],
)
def test_the_rfc_6052_layouts_match_the_rfcs_own_examples(address, prefix_length):
    found = outbound._rfc6052_ipv4(ipaddress.IPv6Address(address), prefix_length)

    assert found == ipaddress.IPv4Address("192.0.2.33")


@pytest.mark.parametrize(
    "address", ["64:ff9b::7f00:1", "::7f00:1", "::ffff:0:7f00:1", "64:ff9b:1::a00:1", "ff0e::1", "3fff::1"]
)
def test_the_decision_does_not_rely_on_pythons_is_global(address):
    # Python 3.11 calls each of these is_global (newer versions differ); the guard refuses them anyway.
    assert outbound.address_refusal(ipaddress.ip_address(address)) is not None


# --- hosts: literals, numeric spellings and DNS answers --------------------------------------------


@pytest.mark.parametrize(("host", "says"), REFUSED)
def test_every_spelling_is_refused_without_asking_the_resolver(host, says, dns):
    with pytest.raises(AddressRefused) as refused:
        outbound.resolve_checked(hostname(host), 443, allow_private=False)

    assert says in str(refused.value)
    assert dns.questions == []


@pytest.mark.parametrize(("host", "says"), WRAPPED)
def test_a_name_is_refused_when_any_of_its_answers_is_a_wrapped_ipv4(host, says, dns):
    dns.answers["receiver.example"] = ["93.184.216.34", hostname(host)]

    with pytest.raises(AddressRefused) as refused:
        outbound.resolve_checked("receiver.example", 443, allow_private=False)

    message = str(refused.value)
    assert message.startswith("receiver.example resolves to a non-public address (")
    assert says in message
    assert "93.184.216.34" not in message  # only the refused answer is named
    assert dns.questions == ["receiver.example"]


def test_a_name_whose_answers_are_all_public_resolves_to_the_first(dns):
    dns.answers["receiver.example"] = ["2606:2800:220:1:248:1893:25c8:1946", "93.184.216.34"]

    address = outbound.resolve_checked("receiver.example", 443, allow_private=False)

    assert address == "2606:2800:220:1:248:1893:25c8:1946"


@pytest.mark.parametrize(
    ("answers", "says"),
    [
        pytest.param([], "does not resolve.", id="_case_no_answer"),
        pytest.param(["not-an-address"], "is not an address", id="_case_garbage"),
    ],
)
def test_a_resolver_without_a_usable_answer_is_a_refusal(answers, says, dns):
    dns.answers["receiver.example"] = answers

    with pytest.raises(AddressRefused, match=says):
        outbound.resolve_checked("receiver.example", 443, allow_private=True)


@pytest.mark.parametrize("host", ALLOWED)
def test_native_public_literals_are_allowed_without_a_lookup(host, dns):
    assert outbound.resolve_checked(hostname(host), 443, allow_private=False) == str(address_of(host))
    assert dns.questions == []


# --- development (DELIVERY_ALLOW_PRIVATE_NETWORKS), as documented -----------------------------------


@pytest.mark.parametrize(("host", "says"), ISSUE_15 + WRAPPED_PRIVATE)
def test_in_development_any_address_is_allowed(host, says, dns):
    assert outbound.resolve_checked(hostname(host), 443, allow_private=True) == str(address_of(host))


@pytest.mark.parametrize(("host", "says"), NUMERIC)
def test_in_development_a_numeric_spelling_is_the_resolvers_to_read(host, says, dns):
    dns.answers[hostname(host)] = ["127.0.0.1"]

    assert outbound.resolve_checked(hostname(host), 443, allow_private=True) == "127.0.0.1"
    assert dns.questions == [hostname(host)]


@pytest.mark.django_db
def test_in_development_configure_accepts_a_wrapped_loopback(tenant, settings):
    settings.DELIVERY_ALLOW_PRIVATE_NETWORKS = True

    destination, _ = destination_configure(tenant=tenant, url="http://[::ffff:0:7f00:1]:8000/hook")

    assert destination.url == "http://[::ffff:0:7f00:1]:8000/hook"


# --- configuration time: destination_configure ------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("host", "says"), REFUSED)
def test_configure_refuses_every_spelling_and_changes_nothing(tenant, host, says, production_guard, dns):
    existing, _ = destination_configure(tenant=tenant, url=PUBLIC_URL)

    with pytest.raises(InvalidInput) as raised:
        destination_configure(tenant=tenant, url=f"https://{host}/hook")

    assert raised.value.code == ErrorCode.INVALID_INPUT
    (problem,) = raised.value.details["url"]
    assert list(raised.value.details) == ["url"]
    assert says in problem
    stored = DeliveryDestination.objects.get()
    assert (stored.pk, stored.url, stored.secret) == (existing.pk, PUBLIC_URL, existing.secret)


@pytest.mark.django_db
@pytest.mark.parametrize(("host", "says"), ISSUE_15)
def test_configure_stores_nothing_for_a_wrapped_address(tenant, host, says, production_guard, dns):
    with pytest.raises(InvalidInput):
        destination_configure(tenant=tenant, url=f"https://{host}/hook")

    assert not DeliveryDestination.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(("host", "says"), WRAPPED)
def test_configure_refuses_a_name_that_resolves_to_a_wrapped_ipv4(tenant, host, says, production_guard, dns):
    dns.answers["receiver.example"] = [hostname(host)]

    with pytest.raises(InvalidInput) as raised:
        destination_configure(tenant=tenant, url="https://receiver.example/hook")

    (problem,) = raised.value.details["url"]
    assert problem.startswith("receiver.example resolves to a non-public address")
    assert says in problem
    assert not DeliveryDestination.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("host", ALLOWED)
def test_configure_accepts_native_public_addresses(tenant, host, production_guard, dns):
    destination, secret = destination_configure(tenant=tenant, url=f"https://{host}/hook")

    assert destination.url == f"https://{host}/hook"
    assert secret is not None
    assert dns.questions == []


@pytest.mark.django_db
def test_configure_refuses_a_malformed_bracketed_host(tenant, production_guard):
    with pytest.raises(InvalidInput) as raised:
        destination_configure(tenant=tenant, url="https://[::ffff:127.1]/hook")

    assert raised.value.details == {"url": ["The URL is not valid."]}


# --- send time: the DNS answer the send would connect to --------------------------------------------


@pytest.mark.parametrize(("host", "says"), WRAPPED)
def test_a_send_whose_dns_answer_is_a_wrapped_ipv4_is_refused_before_connecting(receiver, dns, host, says):
    receiver.expect_request("/hook").respond_with_data("ok")
    dns.answers["receiver.example"] = [hostname(host)]
    request = OutboundRequest(url=f"http://receiver.example:{receiver.port}/hook", body=b"{}", headers={})

    (result,) = outbound.send([request], allow_private=False)

    assert result.refused is True
    assert result.status_code is None
    assert result.error.startswith("refused: receiver.example resolves to a non-public address")
    assert says in result.error
    assert dns.questions == ["receiver.example"]
    assert receiver.log == []


def test_the_send_path_asks_the_same_resolver_and_connects_to_its_answer(receiver, dns):
    """The control for the test above: the answer given is the one a send connects to."""
    receiver.expect_request("/hook").respond_with_data("ok")
    dns.answers["receiver.example"] = ["127.0.0.1"]
    request = OutboundRequest(url=f"http://receiver.example:{receiver.port}/hook", body=b"{}", headers={})

    (result,) = outbound.send([request], allow_private=True)

    assert result.status_code == 200
    assert dns.questions == ["receiver.example"]
    ((seen, _response),) = receiver.log
    assert seen.headers["host"] == f"receiver.example:{receiver.port}"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "rebound_to",
    [
        pytest.param("::ffff:0:7f00:1", id="_case_translated_loopback"),
        pytest.param("64:ff9b::a9fe:a9fe", id="_case_nat64_metadata"),
        pytest.param("2002:a00:1::", id="_case_6to4_private"),
    ],
)
def test_a_name_rebound_after_configuration_is_refused_at_send_time(
    tenant, receiver, dns, production_guard, rebound_to
):
    receiver.expect_request("/hook").respond_with_data("ok")
    url = f"https://receiver.example:{receiver.port}/hook"  # https: what production accepts
    dns.answers["receiver.example"] = ["93.184.216.34"]
    destination_configure(tenant=tenant, url=url)  # public when saved
    dns.answers["receiver.example"] = [rebound_to]

    result = destination_test_send(tenant=tenant)

    assert result.delivered is False
    assert result.status_code is None
    assert result.error is not None and result.error.startswith("refused: ")
    assert rebound_to in result.error
    assert dns.questions == ["receiver.example", "receiver.example"]
    assert receiver.log == []
