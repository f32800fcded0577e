"""Outbound HTTP for deliveries: Standard Webhooks signing, the private-address guard, concurrent sends.

Signing uses the `standardwebhooks` package: `webhook-signature` is `v1,` + base64 HMAC-SHA256 of
`{webhook-id}.{webhook-timestamp}.{body}` keyed by the destination's `whsec_` secret.

The address guard resolves the destination's host once, refuses loopback, private, link-local,
multicast and other non-global addresses (unless `DELIVERY_ALLOW_PRIVATE_NETWORKS`), then connects to
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
import threading
import time
from collections.abc import Iterable, Sequence
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


def address_is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Only globally routable unicast addresses; IPv4-mapped IPv6 is judged as the IPv4 it maps."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve_checked(host: str, port: int, *, allow_private: bool) -> str:
    """Resolve `host` and return the address to connect to, or raise `AddressRefused`.

    Every address the name resolves to must be public (a name with one private answer is refused:
    which answer a client picks is not ours to predict).
    """
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise AddressRefused(f"{host} does not resolve ({exc}).") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        if not addresses:
            raise AddressRefused(f"{host} does not resolve.")
    if not allow_private:
        private = [str(a) for a in addresses if not address_is_public(a)]
        if private:
            raise AddressRefused(
                f"{host} resolves to a non-public address ({', '.join(private)}); deliveries only go to"
                " public addresses."
            )
    return str(addresses[0])


def url_problems(url: str, *, allow_private: bool) -> list[str]:
    """Why `url` cannot be a delivery destination (empty when it can). Resolves the host."""
    parts = urlsplit(url)
    problems: list[str] = []
    allowed_schemes = {"https", "http"} if allow_private else {"https"}
    if parts.scheme not in allowed_schemes:
        problems.append("The URL must use https.")
    if not parts.hostname:
        problems.append("The URL has no host.")
    if parts.username or parts.password:
        problems.append("Credentials in the URL are not allowed; the signature authenticates us.")
    if parts.fragment:
        problems.append("The URL must not have a fragment.")
    if problems:
        return problems
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return ["The URL's port is not valid."]
    try:
        resolve_checked(parts.hostname, port, allow_private=allow_private)
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
