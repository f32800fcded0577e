"""PostgreSQL binary COPY: field encoders and a pump that streams COPY blocks from a worker thread.

Binary COPY is used because the server parses it about twice as fast as text (no timestamp or uuid
parsing). Rows are built as `bytes` by the generator: a 2-byte field count, then per field a 4-byte
length (-1 for NULL) and the value in the type's binary send format. Hot-path values are packed
inline with the `struct` objects below; everything constant is pre-encoded once with these helpers.
"""

from __future__ import annotations

import queue
import struct
import threading
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import orjson
from psycopg.adapt import PyFormat, Transformer

# 2000-01-01T00:00:00Z in Unix microseconds: PostgreSQL timestamps count from there.
PG_EPOCH_US = 946_684_800_000_000

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
NULL = b"\xff\xff\xff\xff"
UUID_LEN = b"\x00\x00\x00\x10"
TRUE = b"\x00\x00\x00\x01\x01"
FALSE = b"\x00\x00\x00\x01\x00"

I32 = struct.Struct(">i")
# A timestamptz field: length 8, then microseconds since PG_EPOCH_US.
TS = struct.Struct(">iq")
INT2 = struct.Struct(">ih")
INT4 = struct.Struct(">ii")

_transformer = Transformer()


def field_count(n: int) -> bytes:
    return struct.pack(">h", n)


def ts(unix_us: int) -> bytes:
    return TS.pack(8, unix_us - PG_EPOCH_US)


def ts_or_null(unix_us: int | None) -> bytes:
    return NULL if unix_us is None else TS.pack(8, unix_us - PG_EPOCH_US)


def text(value: str) -> bytes:
    data = value.encode()
    return I32.pack(len(data)) + data


def uuid_field(raw16: bytes) -> bytes:
    return UUID_LEN + raw16


def int2(value: int) -> bytes:
    return INT2.pack(2, value)


def int4(value: int) -> bytes:
    return INT4.pack(4, value)


def jsonb(value: Any) -> bytes:
    # jsonb's binary format is a version byte (1) followed by the JSON text.
    data = b"\x01" + orjson.dumps(value)
    return I32.pack(len(data)) + data


def numeric(value: Decimal) -> bytes:
    # psycopg's own dumper: numeric's base-10000 binary layout is easy to get subtly wrong.
    data = bytes(_transformer.get_dumper(value, PyFormat.BINARY).dump(value))
    return I32.pack(len(data)) + data


class CopyError(RuntimeError):
    """The COPY worker failed; the original database error is chained."""


class CopyPump:
    """Streams `COPY ... FROM STDIN (FORMAT BINARY)` blocks to PostgreSQL from a worker thread.

    The generator (main thread) builds the next chunk while the worker waits on the socket with the
    GIL released, so Python and the server each keep one core busy. The worker uses the raw psycopg
    connection of Django's connection, so everything stays in the caller's transaction; the caller
    must not touch that connection until `close()` (or `abort()`) returns.
    """

    def __init__(self, pg_connection: Any, *, freeze: bool = False, max_pending: int = 3) -> None:
        self._connection = pg_connection
        # COPY FREEZE (tables truncated in this transaction): rows land frozen and all-visible, so
        # index-only scans work at once, with no VACUUM (autovacuum may well be off on a dev box).
        self._options = "FORMAT BINARY, FREEZE" if freeze else "FORMAT BINARY"
        self._queue: queue.Queue[tuple[str, list[bytes]] | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="seed-copy", daemon=True)
        self.rows: dict[str, int] = {}

    def __enter__(self) -> CopyPump:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def send(self, table: str, columns: Iterable[str], rows: list[bytes]) -> None:
        """Queue one COPY of `rows` (already encoded) into `table`."""
        if not rows:
            return
        if self._error is not None:
            raise CopyError(f"COPY failed: {self._error}") from self._error
        self.rows[table] = self.rows.get(table, 0) + len(rows)
        sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN ({self._options})"
        self._queue.put((sql, rows))

    def close(self) -> None:
        """Wait until everything queued is written; re-raise a worker error."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise CopyError(f"COPY failed: {self._error}") from self._error

    def abort(self) -> None:
        """Stop after the COPY in progress (the caller is unwinding an error)."""
        # Drop what is still queued so the worker reaches the sentinel quickly.
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        try:
            with self._connection.cursor() as cursor:
                while (job := self._queue.get()) is not None:
                    sql, rows = job
                    payload = b"".join(rows)
                    with cursor.copy(sql) as copy:
                        copy.write(SIGNATURE)
                        # A memoryview lets psycopg split a large block without copying it.
                        copy.write(memoryview(payload))
                        copy.write(TRAILER)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._error = exc
            # Keep draining so a producer blocked on put() sees the error instead of hanging.
            while self._queue.get() is not None:
                pass
