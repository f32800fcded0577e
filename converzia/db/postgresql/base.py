"""Django's PostgreSQL backend, with two savings on every request of the web server.

**Session limits.** With `DB_SESSION_TIMEOUTS` (the WSGI entry point sets it), every connection
starts with `statement_timeout` and `lock_timeout` at the guard's defaults (`DB_STATEMENT_TIMEOUT_MS`
and half of it), sent in the startup packet: no round trip. A guarded read with those limits then
needs no transaction of its own (converzia/db/timeouts.py). Commands and the worker keep the
server's defaults: a migration or a seed may legitimately run a statement for minutes.

**Health check.**

`CONN_HEALTH_CHECKS` makes Django run `SELECT 1` before the first query of every request that reuses
a persistent connection: a whole round trip (and a cursor) on every request, ~10 % of a cheap read
(docs/performance.md "Framework overhead"). A connection the server has closed (a restart, a
terminated backend, an idle timeout) has something waiting on its socket: the server's FATAL
message or the end of the stream. An idle, healthy connection has nothing. So the socket is polled
first (no I/O, a few microseconds) and `SELECT 1` runs only when it has something to say: a dead
connection is still found and replaced before the request uses it, as Django's check does.

What polling cannot see, a peer that vanished without closing (a cable cut), `SELECT 1` could not
see quickly either: it would wait for TCP to give up. The connect and statement timeouts bound both.
"""

from __future__ import annotations

import datetime as dt
import select
from typing import Any

import psycopg
from django.conf import settings
from django.db.backends.postgresql import base as postgresql
from psycopg.pq import Format

from converzia.db.timeouts import default_lock_timeout_ms

_ANY_EVENT = (
    select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | getattr(select, "POLLRDHUP", 0)
)


def socket_has_news(fileno: int) -> bool:
    """True when the connection's socket is readable, hung up or in error: something happened since
    its last exchange (an idle PostgreSQL connection in sync has nothing to read)."""
    poller = select.poll()
    poller.register(fileno, _ANY_EVENT)
    return bool(poller.poll(0))


_TIMESTAMPTZ_OID = 1184
# psycopg's fastest timestamptz loader (C, with psycopg[binary]).
_FAST_TIMESTAMPTZ_LOADER = psycopg.adapters.get_loader(_TIMESTAMPTZ_OID, Format.TEXT)


def default_limits_ms() -> tuple[int, int]:
    """(statement_timeout, lock_timeout) of a guard that names none: the session limits."""
    timeout_ms = int(settings.DB_STATEMENT_TIMEOUT_MS)
    return timeout_ms, default_lock_timeout_ms(timeout_ms)


class DatabaseWrapper(postgresql.DatabaseWrapper):
    # The limits the open connection's session started with; None: the server's defaults.
    session_limits_ms: tuple[int, int] | None = None

    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        if getattr(settings, "DB_SESSION_TIMEOUTS", False):
            statement_ms, lock_ms = default_limits_ms()
            limits = f"-c statement_timeout={statement_ms}ms -c lock_timeout={lock_ms}ms"
            params["options"] = f"{params['options']} {limits}" if params.get("options") else limits
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        self.session_limits_ms = (
            default_limits_ms() if "statement_timeout=" in (conn_params.get("options") or "") else None
        )
        return connection

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = super().create_cursor(name)
        if self.timezone is dt.UTC:
            # Django loads timestamptz through a Python subclass that pins tzinfo to the connection's
            # zone. In UTC (the session's zone, which Django sets) psycopg's own loader returns exactly
            # that, `datetime.timezone.utc`, several times faster: three per lead list row. On the
            # cursor, because Django checks the connection's loader for its `timezone`.
            cursor.adapters.register_loader(_TIMESTAMPTZ_OID, _FAST_TIMESTAMPTZ_LOADER)
        return cursor

    def close_if_health_check_failed(self) -> None:
        if self.pool or self.connection is None or not self.health_check_enabled or self.health_check_done:
            return
        try:
            suspicious = self.connection.closed or socket_has_news(self.connection.fileno())
        except (OSError, ValueError, postgresql.Database.Error):
            suspicious = True
        # Only a socket with news pays for the round trip; a pending notice is read and found harmless.
        if suspicious and not self.is_usable():
            self.close()
        self.health_check_done = True
