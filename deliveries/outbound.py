"""Outbound HTTP for deliveries: Standard Webhooks signing, the private-address guard, concurrent sends.

Signing uses the `standardwebhooks` package: `webhook-signature` is `v1,` + base64 HMAC-SHA256 of
`{webhook-id}.{webhook-timestamp}.{body}` keyed by the destination's `whsec_` secret.

The address guard resolves the destination's host once, refuses loopback, private, link-local,
multicast and other non-global addresses, IPv6 forms that carry an IPv4 address (mapped, compatible,
translated, NAT64, 6to4, Teredo) and IPv4 written in non-standard forms (127.1, 0x7f.1, 2130706433),
unless `DELIVERY_ALLOW_PRIVATE_NETWORKS`; `address_refusal` is its one decision. It then connects to
the address it checked — the URL's host is swapped for that IP, with the original name kept in the
`Host` header and as the TLS server name — so a DNS answer that changes between check and connect
(rebinding) cannot steer a request inside our network.

Sends run on one asyncio loop in a background thread per process with one shared aiohttp session,
so any number of job threads can have many requests in flight, and connections are reused.
Redirects are not followed (a 3xx is a failed attempt).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import email.utils
import ipaddress
import os
import socket
import string
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from django.conf import settings
from standardwebhooks import Webhook

USER_AGENT = "Converzia-Webhooks/1.0"
# Enough of a receiver's answer to explain a failure to staff; the rest is never read.
RESPONSE_EXCERPT_BYTES = 512
# Retry-After beyond this is treated as this (a receiver cannot park a delivery for a week).
RETRY_AFTER_MAX_S = 24 * 3600


class AddressRefused(Exception):
    """The destination resolves to an address we do not send to (or does not resolve at all)."""


@dataclass(frozen=True)
class OutboundRequest:
    url: str
    body: bytes
    headers: dict[str, str]


@dataclass
class OutboundResult:
    status_code: int | None = None
    duration_ms: int = 0
    error: str = ""
    retry_after_s: int | None = None
    response_excerpt: str = ""
    # True when nothing was sent because the address was refused (no connection was attempted).
    refused: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# --- Signing ------------------------------------------------------------------------------------


def signed_headers(
    *, secret: str, message_id: str, body: bytes, sent_at: datetime | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers for one send of `body` (the id stays the same across retries)."""
    sent_at = sent_at or datetime.now(UTC)
    signature = Webhook(secret).sign(message_id, sent_at, body.decode())
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signature,
    }


# --- The address guard ----------------------------------------------------------------------------
#
# Decision: an IPv6 address that carries an IPv4 address (IPv4-mapped, IPv4-compatible,
# IPv4-translated, NAT64, 6to4, Teredo) is refused even when the IPv4 inside is public. Where such a
# packet lands is decided by a translator or relay we do not control (a cloud NAT64 gateway can
# reach the VPC's private range), every spelling we fail to unwrap would be a way in, and no
# receiver needs one: a receiver with IPv6 has a native address, one without publishes an A record
# that we connect to directly. The cost: a worker on an IPv6-only network behind DNS64 could not reach
# IPv4-only receivers (we do not run one). The IPv4 inside is still unwrapped, to say what it reaches.

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]


def _networks(
    *entries: tuple[str, str],
) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(network), label) for network, label in entries)


# Checked before `is_global`, whose answers differ between Python versions (3.11 calls ::a.b.c.d,
# 64:ff9b::/96, 3fff::/20 and global-scope multicast global): the IANA special-purpose registries,
# spelled out.
_IPV4_NOT_GLOBAL = _networks(
    ("0.0.0.0/8", "unspecified (this network)"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved for IETF protocols"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # 255.255.255.255 (broadcast) included
)
_IPV6_NOT_GLOBAL = _networks(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("100::/64", "discard-only"),
    ("2001::/23", "reserved for IETF protocols"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
# IANA allocates global unicast from 2000::/3 only; everything outside it is special or unassigned.
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")

_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291 §2.5.5.1, deprecated
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765


@dataclass(frozen=True)
class EmbeddedIPv4:
    """An IPv4 address carried inside an IPv6 one: the form, the address and its role (if any)."""

    form: str
    address: ipaddress.IPv4Address
    role: str = ""


def _rfc6052_ipv4(address: ipaddress.IPv6Address, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address in an RFC 6052 §2.2 IPv4-embedded IPv6 address with that prefix length.

    The 32 IPv4 bits follow the prefix but skip bits 64..71 (the "u" octet, always zero): for a /48
    they are bits 48..63 and 72..87, for a /96 bits 96..127 (where the u octet is inside the prefix).
    """
    packed = address.packed
    if prefix_length == 96:
        return ipaddress.IPv4Address(packed[12:])
    without_u_octet = packed[:8] + packed[9:]
    start = prefix_length // 8
    return ipaddress.IPv4Address(without_u_octet[start : start + 4])


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[EmbeddedIPv4]:
    """Every IPv4 address `address` carries, by transition form; empty for native IPv6."""
    if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d
        return [EmbeddedIPv4("IPv4-mapped IPv6", address.ipv4_mapped)]
    low32 = ipaddress.IPv4Address(address.packed[12:])
    if address in _IPV4_TRANSLATED:  # ::ffff:0:a.b.c.d
        return [EmbeddedIPv4("IPv4-translated IPv6", low32)]
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # ::a.b.c.d; :: and ::1 are themselves
        return [EmbeddedIPv4("IPv4-compatible IPv6", low32)]
    if address in _NAT64_WELL_KNOWN:
        return [EmbeddedIPv4("NAT64 IPv6 (64:ff9b::/96)", low32)]
    if address in _NAT64_LOCAL_USE:
        # RFC 8215 lets an operator use any RFC 6052 prefix length from /48 on inside 64:ff9b:1::/48,
        # so which bits hold the IPv4 address is the operator's choice: every reading is reported
        # (the whole prefix is refused anyway).
        found: dict[ipaddress.IPv4Address, list[str]] = {}
        for prefix_length in (48, 56, 64, 96):
            found.setdefault(_rfc6052_ipv4(address, prefix_length), []).append(f"/{prefix_length}")
        return [
            EmbeddedIPv4(
                "NAT64 local-use IPv6 (64:ff9b:1::/48)", ipv4, f"with a {' or '.join(lengths)} prefix"
            )
            for ipv4, lengths in found.items()
        ]
    if address.sixtofour is not None:  # 2002:AABB:CCDD::/48 carries AA.BB.CC.DD in bits 16..47
        return [EmbeddedIPv4("6to4 IPv6 (2002::/16)", address.sixtofour)]
    if address.teredo is not None:
        # 2001:0::/32: the server's IPv4 in bits 32..63, the client's in bits 96..127 with every bit
        # inverted (RFC 4380 §4); the standard library undoes the inversion.
        server, client = address.teredo
        return [
            EmbeddedIPv4("Teredo IPv6 (2001::/32)", server, "the Teredo server"),
            EmbeddedIPv4("Teredo IPv6 (2001::/32)", client, "the Teredo client"),
        ]
    return []


def _ipv4_refusal(address: ipaddress.IPv4Address) -> str | None:
    for network, label in _IPV4_NOT_GLOBAL:
        if address in network:
            return label
    # Whatever else the running Python knows to be special.
    return None if address.is_global else "not globally routable"


def _ipv6_refusal(address: ipaddress.IPv6Address) -> str | None:
    for network, label in _IPV6_NOT_GLOBAL:
        if address in network:
            return label
    if address not in _IPV6_GLOBAL_UNICAST:
        return "outside global unicast (2000::/3)"
    return None if address.is_global else "not globally routable"


def _describe_embedded(item: EmbeddedIPv4) -> str:
    notes = [_ipv4_refusal(item.address) or "public", item.role]
    return f"{item.address} ({', '.join(note for note in notes if note)})"


def address_refusal(address: IPAddress) -> str | None:
    """Why no delivery may connect to `address`, or None when one may.

    The one decision of the address guard, used when a tenant saves a URL and again for the DNS
    answers of every send: only native, globally routable unicast addresses are allowed.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return _ipv4_refusal(address)
    if address.scope_id:
        # A zone index only means something on a link of this machine.
        return "scoped to a network interface"
    embedded = embedded_ipv4(address)
    if embedded:
        carried = ", ".join(_describe_embedded(item) for item in embedded)
        return f"{embedded[0].form} carrying {carried}; IPv4 inside IPv6 is never accepted"
    return _ipv6_refusal(address)


def address_is_public(address: IPAddress) -> bool:
    """True when deliveries may connect to `address` (see `address_refusal`)."""
    return address_refusal(address) is None


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the operating system resolves `host` to (`socket.gaierror` if none)."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


# The resolver the guard asks; tests swap it (monkeypatch.setattr(outbound, "resolver", ...)) to
# give any DNS answer without a DNS server or a hosts file.
resolver: Resolver = system_resolver


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_ip_literal(host: str) -> bool:
    return _ip_literal(host) is not None


def _ipv4_number(part: str) -> int | None:
    """One part of a numeric IPv4 host as the WHATWG URL standard reads it (hex, octal or decimal)."""
    if part[:2].lower() == "0x":
        digits, alphabet, base = part[2:], string.hexdigits, 16
    elif len(part) > 1 and part.startswith("0"):
        digits, alphabet, base = part[1:], string.octdigits, 8
    else:
        digits, alphabet, base = part, string.digits, 10
    if not digits:
        return 0 if base == 16 else None  # a bare "0x" is zero
    # Checked by hand: int() would also take "+", "_" and spaces.
    if not all(char in alphabet for char in digits):
        return None
    return int(digits, base)


def _numeric_ipv4_host(host: str) -> tuple[bool, ipaddress.IPv4Address | None]:
    """Whether `host` is an IPv4 address in some spelling, and which one (None if it cannot be).

    Browsers (the WHATWG URL standard) and the C library read a host whose last label is a number as
    IPv4, in shorthand, octal, hex or as one 32-bit number: 127.1, 0177.0.0.1, 0x7f.1, 2130706433.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # one trailing dot is allowed
    last_part = parts[-1]
    if not (last_part.isascii() and last_part.isdigit()) and _ipv4_number(last_part) is None:
        return False, None  # a name
    numbers = [_ipv4_number(part) for part in parts]
    if len(numbers) > 4 or None in numbers:
        return True, None
    *leading, last = [number for number in numbers if number is not None]
    # The last number fills all the bytes the others leave: 127.1 is 127.0.0.1.
    if any(number > 255 for number in leading) or last >= 256 ** (5 - len(numbers)):
        return True, None
    value = sum(number << (8 * (3 - index)) for index, number in enumerate(leading)) + last
    return True, ipaddress.IPv4Address(value)


def resolve_checked(host: str, port: int, *, allow_private: bool) -> str:
    """Resolve `host` and return the address to connect to, or raise `AddressRefused`.

    Every address the name resolves to must pass `address_refusal` (a name with one refused answer
    is refused: which answer a client picks is not ours to predict).
    """
    literal = _ip_literal(host)
    if literal is None and not allow_private:
        numeric, meaning = _numeric_ipv4_host(host)
        if numeric:
            # Refused even when public: software disagrees about what these spellings mean.
            what = f"is {meaning} in a non-standard form" if meaning else "is not a valid IPv4 address"
            raise AddressRefused(f"{host} {what}; write IPv4 addresses as four decimal numbers (a.b.c.d).")
    if literal is not None:
        addresses = [literal]
    else:
        try:
            answers = resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise AddressRefused(f"{host} does not resolve ({exc}).") from None
        try:
            # A scope suffix (%eth0) from the resolver names an interface, not an address.
            addresses = list(dict.fromkeys(ipaddress.ip_address(answer.split("%")[0]) for answer in answers))
        except ValueError as exc:
            raise AddressRefused(f"{host} resolves to something that is not an address ({exc}).") from None
        if not addresses:
            raise AddressRefused(f"{host} does not resolve.")
    if not allow_private:
        refused = [(address, address_refusal(address)) for address in addresses]
        details = [f"{address} is {reason}" for address, reason in refused if reason]
        if details:
            raise AddressRefused(
                f"{host} resolves to a non-public address ({'; '.join(details)}); deliveries only go to"
                " public addresses."
            )
    return str(addresses[0])


def url_problems(url: str, *, allow_private: bool) -> list[str]:
    """Why `url` cannot be a delivery destination (empty when it can). Resolves the host."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:
        # urlsplit refuses malformed bracketed hosts such as [::ffff:127.1].
        return ["The URL is not valid."]
    problems: list[str] = []
    allowed_schemes = {"https", "http"} if allow_private else {"https"}
    if parts.scheme not in allowed_schemes:
        problems.append("The URL must use https.")
    if not hostname:
        problems.append("The URL has no host.")
    if parts.username or parts.password:
        problems.append("Credentials in the URL are not allowed; the signature authenticates us.")
    if parts.fragment:
        problems.append("The URL must not have a fragment.")
    if problems or not hostname:
        return problems
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return ["The URL's port is not valid."]
    try:
        resolve_checked(hostname, port, allow_private=allow_private)
    except AddressRefused as exc:
        problems.append(str(exc))
    return problems


def _pinned(url: str, address: str) -> tuple[str, str, str]:
    """The URL with its host replaced by the checked address, plus the Host header and TLS name."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    ip_host = f"[{address}]" if ":" in address else address
    netloc = f"{ip_host}:{parts.port}" if parts.port else ip_host
    host_header = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), host_header, host


# --- Sending --------------------------------------------------------------------------------------


def parse_retry_after(value: str | None) -> int | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), capped; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = int(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = int((when - datetime.now(UTC)).total_seconds())
    return max(0, min(seconds, RETRY_AFTER_MAX_S))


class _Sender:
    """One event loop thread and one aiohttp session per process (recreated after a fork).

    aiohttp rather than httpx here: with a hundred requests in flight on one loop, httpx's async pool
    took 1–5 s to finish 100 sends to a receiver answering in 50 ms; aiohttp took 0.14 s (measured on
    this machine; docs/deliveries.md).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None and self._pid == os.getpid():
                return self._loop
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="delivery-sender", daemon=True)
            thread.start()
            self._session = None
            self._loop, self._pid = loop, os.getpid()
            atexit.register(self._close, loop)
            return loop

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        """At interpreter exit: close the pooled connections cleanly (no "unclosed session" noise)."""
        if loop is not self._loop or self._pid != os.getpid():
            return
        session = self._session

        async def close() -> None:
            if session is not None:
                await session.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=2)
        loop.call_soon_threadsafe(loop.stop)

    def _get_session(self) -> aiohttp.ClientSession:
        # Only ever called on the loop thread, so no lock is needed.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=settings.DELIVERY_MAX_IN_FLIGHT, use_dns_cache=False),
                trust_env=False,
                auto_decompress=False,
            )
        return self._session

    async def _resolve(self, host: str, port: int, allow_private: bool) -> str | AddressRefused:
        """The checked address of one host (or why not), within the connect timeout."""
        try:
            if _is_ip_literal(host):
                return resolve_checked(host, port, allow_private=allow_private)
            # getaddrinfo blocks: keep it off the loop that carries every other send, and bound it
            # (a hung DNS server must not hold a whole batch).
            return await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(
                    None, lambda: resolve_checked(host, port, allow_private=allow_private)
                ),
                timeout=settings.DELIVERY_CONNECT_TIMEOUT_S,
            )
        except TimeoutError:
            return AddressRefused(f"{host} did not resolve within {settings.DELIVERY_CONNECT_TIMEOUT_S:g} s.")
        except AddressRefused as exc:
            return exc

    async def _send_one(self, request: OutboundRequest, address: str | AddressRefused) -> OutboundResult:
        started = time.perf_counter()
        result = OutboundResult()
        parts = urlsplit(request.url)
        if isinstance(address, AddressRefused):
            result.error, result.refused = f"refused: {address}", True
            return result
        url, host_header, server_name = _pinned(request.url, address)
        headers = {**request.headers, "Host": host_header}
        tls = {"server_hostname": server_name} if parts.scheme == "https" else {}
        try:
            async with self._get_session().post(
                url,
                data=request.body,
                headers=headers,
                allow_redirects=False,
                # Per request, so a settings change applies without a new session.
                timeout=aiohttp.ClientTimeout(
                    total=settings.DELIVERY_TIMEOUT_S, sock_connect=settings.DELIVERY_CONNECT_TIMEOUT_S
                ),
                **tls,
            ) as response:
                result.status_code = response.status
                result.retry_after_s = parse_retry_after(response.headers.get("Retry-After"))
                excerpt = await response.content.read(RESPONSE_EXCERPT_BYTES)
                result.response_excerpt = excerpt.decode(errors="replace")
        except TimeoutError:
            result.error = f"timed out after {settings.DELIVERY_TIMEOUT_S:g} s"
        except aiohttp.ClientError as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            result.duration_ms = round((time.perf_counter() - started) * 1000)
        return result

    async def _send_all(
        self, requests: Sequence[OutboundRequest], allow_private: bool
    ) -> list[OutboundResult]:
        # Each distinct host is resolved and checked once per batch (a tenant's batch is one host).
        targets: list[tuple[str, int] | AddressRefused] = []
        for request in requests:
            parts = urlsplit(request.url)
            try:
                targets.append((parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)))
            except ValueError as exc:
                targets.append(AddressRefused(f"the URL's port is not valid ({exc})."))
        hosts = list(dict.fromkeys(t for t in targets if not isinstance(t, AddressRefused)))
        addresses = dict(
            zip(
                hosts,
                await asyncio.gather(*(self._resolve(host, port, allow_private) for host, port in hosts)),
                strict=True,
            )
        )
        return list(
            await asyncio.gather(
                *(
                    self._send_one(r, t if isinstance(t, AddressRefused) else addresses[t])
                    for r, t in zip(requests, targets, strict=True)
                )
            )
        )

    def send(
        self, requests: Iterable[OutboundRequest], *, allow_private: bool | None = None
    ) -> list[OutboundResult]:
        """Send every request concurrently; blocks the calling thread until all have an outcome."""
        requests = list(requests)
        if not requests:
            return []
        if allow_private is None:
            allow_private = settings.DELIVERY_ALLOW_PRIVATE_NETWORKS
        loop = self._start()
        future = asyncio.run_coroutine_threadsafe(self._send_all(requests, allow_private), loop)
        # The per-request timeout bounds each send; this only guards against a wedged loop.
        return future.result(timeout=settings.DELIVERY_TIMEOUT_S + 30)


sender = _Sender()


def send(requests: Iterable[OutboundRequest], *, allow_private: bool | None = None) -> list[OutboundResult]:
    return sender.send(requests, allow_private=allow_private)
