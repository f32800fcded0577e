"""Stand-ins for a database or Redis that cannot be reached: a closed local port, no mocks."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connections


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def database_down() -> Iterator[None]:
    """The default connection aimed at a closed port until the block ends, then restored."""
    connection = connections["default"]
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(closed_port()))
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


def dead_redis_caches(caches: dict[str, Any]) -> dict[str, Any]:
    """`caches` (settings.CACHES) with the default cache on a closed port and short socket timeouts."""
    default = caches["default"]
    return {
        "default": {
            **default,
            "LOCATION": f"redis://127.0.0.1:{closed_port()}/0",
            "OPTIONS": {**default["OPTIONS"], "SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        }
    }
