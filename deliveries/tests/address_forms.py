"""Every spelling of a destination host the address guard must judge, as tables shared by its tests.

Each row is a host as written in a URL (IPv6 in brackets) and a fragment the refusal must contain:
what the address reaches, so a row also proves the unwrapping. Used at every level: the one decision
(`deliveries/tests/test_address_guard.py`), the configuration service and the send path (same file),
and the HTTP PUT (`portal/tests/test_destination_api.py`).

Decision under test: an IPv6 form that carries an IPv4 address is refused even when that IPv4 is
public (WRAPPED_PUBLIC); only native, globally routable addresses are allowed (ALLOWED). Why:
`deliveries/outbound.py`, "The address guard".
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import pytest

# Issue 15: accepted before the fix (PUT answered 200, the test send tried to connect).
ISSUE_15 = [
    pytest.param(
        "[::127.0.0.1]", "IPv4-compatible IPv6 carrying 127.0.0.1 (loopback)", id="_case_compat_loop"
    ),
    pytest.param("[::a00:1]", "IPv4-compatible IPv6 carrying 10.0.0.1 (private)", id="_case_compat_private"),
    pytest.param("[64:ff9b::7f00:1]", "(64:ff9b::/96) carrying 127.0.0.1 (loopback)", id="_case_nat64_loop"),
    pytest.param("[64:ff9b::a9fe:a9fe]", "carrying 169.254.169.254 (link-local)", id="_case_nat64_metadata"),
    pytest.param(
        "[64:ff9b:1::a00:1]", "10.0.0.1 (private, with a /96 prefix)", id="_case_nat64_local_use_96"
    ),
    pytest.param(
        "[2002:7f00:1::]", "6to4 IPv6 (2002::/16) carrying 127.0.0.1 (loopback)", id="_case_6to4_loop"
    ),
    pytest.param(
        "[2002:a00:1::]", "6to4 IPv6 (2002::/16) carrying 10.0.0.1 (private)", id="_case_6to4_private"
    ),
    pytest.param(
        "[::ffff:0:7f00:1]", "IPv4-translated IPv6 carrying 127.0.0.1 (loopback)", id="_case_translated_loop"
    ),
    pytest.param(
        "[::ffff:0:a00:1]", "IPv4-translated IPv6 carrying 10.0.0.1 (private)", id="_case_translated_private"
    ),
]

# More wrappers of non-public IPv4.
WRAPPED_PRIVATE = [
    pytest.param(
        "[::ffff:127.0.0.1]", "IPv4-mapped IPv6 carrying 127.0.0.1 (loopback)", id="_case_mapped_loop"
    ),
    pytest.param(
        "[::ffff:a9fe:a9fe]", "IPv4-mapped IPv6 carrying 169.254.169.254", id="_case_mapped_metadata_hex"
    ),
    pytest.param("[::ffff:100.64.0.1]", "100.64.0.1 (carrier-grade NAT)", id="_case_mapped_cgnat"),
    # RFC 6052 /48 layout: the IPv4 in bits 48..63 and 72..87, around the zero "u" octet.
    pytest.param(
        "[64:ff9b:1:7f00:0:100::]", "127.0.0.1 (loopback, with a /48 prefix)", id="_case_nat64_local_use_48"
    ),
    pytest.param("[64:ff9b::c0a8:101]", "carrying 192.168.1.1 (private)", id="_case_nat64_private_192"),
    pytest.param("[2002:a9fe:a9fe:1::1]", "carrying 169.254.169.254 (link-local)", id="_case_6to4_metadata"),
    # Teredo: server 8.8.8.8 in bits 32..63, client 127.0.0.1 stored inverted (0x80fffffe).
    pytest.param(
        "[2001:0:808:808::80ff:fffe]",
        "127.0.0.1 (loopback, the Teredo client)",
        id="_case_teredo_client_loop",
    ),
    pytest.param(
        "[2001:0:a00:1::f7f7:f7f7]", "10.0.0.1 (private, the Teredo server)", id="_case_teredo_server_private"
    ),
]

# Plain non-global addresses (refused before issue 15 too).
PLAIN = [
    pytest.param("127.0.0.1", "127.0.0.1 is loopback", id="_case_loopback"),
    pytest.param("127.8.9.10", "127.8.9.10 is loopback", id="_case_loopback_not_1"),
    pytest.param("10.1.2.3", "10.1.2.3 is private", id="_case_private_10"),
    pytest.param("172.16.0.1", "172.16.0.1 is private", id="_case_private_172_16"),
    pytest.param("172.31.255.254", "172.31.255.254 is private", id="_case_private_172_31"),
    pytest.param("192.168.1.1", "192.168.1.1 is private", id="_case_private_192_168"),
    pytest.param("169.254.169.254", "169.254.169.254 is link-local", id="_case_metadata"),
    pytest.param("100.64.0.1", "100.64.0.1 is carrier-grade NAT", id="_case_cgnat"),
    pytest.param("0.0.0.0", "0.0.0.0 is unspecified", id="_case_unspecified_v4"),
    pytest.param("224.0.0.1", "224.0.0.1 is multicast", id="_case_multicast_v4"),
    pytest.param("255.255.255.255", "255.255.255.255 is reserved", id="_case_broadcast"),
    pytest.param("192.0.2.10", "192.0.2.10 is documentation", id="_case_documentation_v4"),
    pytest.param("198.18.0.1", "198.18.0.1 is benchmarking", id="_case_benchmarking"),
    pytest.param("[::1]", "::1 is loopback", id="_case_loopback_v6"),
    pytest.param("[::]", ":: is unspecified", id="_case_unspecified_v6"),
    pytest.param("[fe80::1]", "fe80::1 is link-local", id="_case_link_local_v6"),
    pytest.param("[fc00::1]", "fc00::1 is unique local", id="_case_unique_local_fc"),
    pytest.param("[fd00:ec2::254]", "fd00:ec2::254 is unique local", id="_case_unique_local_metadata"),
    pytest.param("[fec0::1]", "fec0::1 is site-local", id="_case_site_local"),
    pytest.param("[ff02::1]", "ff02::1 is multicast", id="_case_multicast_link"),
    # Python 3.11 calls global-scope multicast is_global.
    pytest.param("[ff0e::1]", "ff0e::1 is multicast", id="_case_multicast_global_scope"),
    pytest.param("[2001:db8::1]", "2001:db8::1 is documentation", id="_case_documentation_v6"),
    pytest.param("[3fff::1]", "3fff::1 is documentation", id="_case_documentation_3fff"),
    pytest.param("[100::1]", "100::1 is discard-only", id="_case_discard"),
    pytest.param("[2001:2::1]", "2001:2::1 is reserved for IETF protocols", id="_case_ietf_benchmarking"),
    pytest.param("[5f00::1]", "5f00::1 is segment routing", id="_case_srv6"),
    pytest.param("[4000::1]", "4000::1 is outside global unicast (2000::/3)", id="_case_unallocated"),
    pytest.param("[fe80::1%25eth0]", "is scoped to a network interface", id="_case_zone_index"),
]

# IPv4 in the spellings browsers and the C library also accept: refused in any of them, public too.
NUMERIC = [
    pytest.param("2130706433", "is 127.0.0.1 in a non-standard form", id="_case_one_number"),
    pytest.param("0x7f000001", "is 127.0.0.1 in a non-standard form", id="_case_one_hex_number"),
    pytest.param("017700000001", "is 127.0.0.1 in a non-standard form", id="_case_one_octal_number"),
    pytest.param("0x7f.1", "is 127.0.0.1 in a non-standard form", id="_case_hex_short"),
    pytest.param("127.1", "is 127.0.0.1 in a non-standard form", id="_case_short"),
    pytest.param("0177.0.0.1", "is 127.0.0.1 in a non-standard form", id="_case_octal"),
    pytest.param("0x7f.0.0.1", "is 127.0.0.1 in a non-standard form", id="_case_hex_part"),
    pytest.param("127.0.0.01", "is 127.0.0.1 in a non-standard form", id="_case_leading_zero"),
    pytest.param("127.0.0.1.", "is 127.0.0.1 in a non-standard form", id="_case_trailing_dot"),
    pytest.param("10.1", "is 10.0.0.1 in a non-standard form", id="_case_short_private"),
    pytest.param("0xa9.0xfea9fe", "is 169.254.169.254 in a non-standard form", id="_case_hex_metadata"),
    pytest.param("0xa9fe.0xa9fe", "is not a valid IPv4 address", id="_case_first_part_too_big"),
    pytest.param("134744072", "is 8.8.8.8 in a non-standard form", id="_case_public_one_number"),
    pytest.param("1.2.3.4.5", "is not a valid IPv4 address", id="_case_five_parts"),
    pytest.param("256.0.0.1", "is not a valid IPv4 address", id="_case_part_too_big"),
    pytest.param("1.2.3.09", "is not a valid IPv4 address", id="_case_bad_octal"),
]

# Public IPv4 inside every IPv6 form: refused (the decision), the refusal says it is public.
WRAPPED_PUBLIC = [
    pytest.param("[::ffff:8.8.8.8]", "IPv4-mapped IPv6 carrying 8.8.8.8 (public)", id="_case_mapped"),
    pytest.param("[::8.8.8.8]", "IPv4-compatible IPv6 carrying 8.8.8.8 (public)", id="_case_compatible"),
    pytest.param(
        "[::ffff:0:808:808]", "IPv4-translated IPv6 carrying 8.8.8.8 (public)", id="_case_translated"
    ),
    pytest.param("[64:ff9b::808:808]", "(64:ff9b::/96) carrying 8.8.8.8 (public)", id="_case_nat64"),
    pytest.param(
        "[64:ff9b:1:808:8:800::]", "8.8.8.8 (public, with a /48 prefix)", id="_case_nat64_local_use_48"
    ),
    pytest.param("[2002:808:808::1]", "6to4 IPv6 (2002::/16) carrying 8.8.8.8 (public)", id="_case_6to4"),
    pytest.param(
        "[2001:0:808:808::fefe:fefe]",
        "8.8.8.8 (public, the Teredo server), 1.1.1.1 (public, the Teredo client)",
        id="_case_teredo",
    ),
]

REFUSED = ISSUE_15 + WRAPPED_PRIVATE + PLAIN + NUMERIC + WRAPPED_PUBLIC
# The forms that are addresses (not the numeric spellings, which never reach the decision).
REFUSED_ADDRESSES = ISSUE_15 + WRAPPED_PRIVATE + PLAIN + WRAPPED_PUBLIC

ALLOWED = [
    pytest.param("93.184.216.34", id="_case_public_v4"),
    pytest.param("8.8.8.8", id="_case_public_v4_resolver"),
    pytest.param("[2606:2800:220:1:248:1893:25c8:1946]", id="_case_public_v6"),
    pytest.param("[2001:4860:4860::8888]", id="_case_public_v6_in_2001_slash_16"),
    pytest.param("[2a00:1450:4001:82b::200e]", id="_case_public_v6_2a00"),
]


def hostname(host: str) -> str:
    """The host as the guard receives it from a URL (`urlsplit(...).hostname`: no brackets)."""
    parsed = urlsplit(f"https://{host}/").hostname
    assert parsed is not None
    return parsed


class FakeDNS:
    """Stands in for `outbound.resolver`: fixed answers per name, and a record of every question."""

    def __init__(self, answers: dict[str, Sequence[str]] | None = None) -> None:
        self.answers: dict[str, Sequence[str]] = dict(answers or {})
        self.questions: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.questions.append(host)
        if host not in self.answers:
            raise OSError(f"no answer for {host} in this test")
        return list(self.answers[host])
