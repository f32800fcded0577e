"""The SQL behind a request, timed alone: the denominator of the "API / raw SQL" overhead ratio.

The request is replayed in-process with Django's test client while `execute_wrapper` records every
statement; the reads among them are then run again, back to back, on the bare psycopg connection
(no ORM, no serializer, no HTTP) and timed. The ratio API p50 / raw p50 is therefore what the whole
Python stack (routing, auth, tenant resolution, serializers, rendering, WSGI, HTTP) costs on top of
the database work of that exact request.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.test import Client

# Statements replayed: reads only. SAVEPOINT/SET LOCAL/RELEASE come from the timeout guard, and writes
# (a token's last-used stamp) are not part of what a read costs the database on the next request.
_READ_PREFIXES = ("SELECT", "WITH")


@dataclass(frozen=True)
class Statement:
    sql: str
    params: Any


@dataclass(frozen=True)
class CapturedRequest:
    status: int
    statements: list[Statement]  # every statement, in order
    reads: list[Statement]  # the ones the raw timing replays


def capture_request_sql(path: str, headers: dict[str, str]) -> CapturedRequest:
    """Run GET `path` in this process and record the SQL it executes."""
    recorded: list[Statement] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        recorded.append(Statement(sql=sql, params=params))
        return execute(sql, params, many, context)

    # Django's test client takes headers as WSGI environ keys or through `headers=`.
    client = Client(headers=headers, SERVER_NAME="127.0.0.1")
    with connection.execute_wrapper(record):
        response = client.get(path)
    reads = [statement for statement in recorded if statement.sql.lstrip().upper().startswith(_READ_PREFIXES)]
    return CapturedRequest(status=response.status_code, statements=recorded, reads=reads)


def time_statements(statements: Sequence[Statement], *, repeat: int, concurrency: int = 1) -> list[float]:
    """Seconds per run of all `statements`, each fetched completely, `repeat` times per client (after
    one warm-up), from `concurrency` clients at once: the same contention as the HTTP measurement, so
    the ratio compares like with like."""
    if concurrency == 1:
        return _time_statements(statements, repeat=repeat)
    results: list[list[float]] = [[] for _ in range(concurrency)]

    def client(index: int) -> None:
        try:
            results[index] = _time_statements(statements, repeat=repeat)
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=client, args=(index,)) for index in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [duration for durations in results for duration in durations]


def _time_statements(statements: Sequence[Statement], *, repeat: int) -> list[float]:
    connection.ensure_connection()
    raw = connection.connection  # the psycopg connection, with Django's adapters and binding mode
    durations = []
    for run in range(repeat + 1):
        started = time.perf_counter()
        with raw.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement.sql, statement.params)
                if cursor.description is not None:
                    cursor.fetchall()
        elapsed = time.perf_counter() - started
        if not raw.autocommit:
            raw.rollback()
        if run:  # the first run warms caches and prepares statements
            durations.append(elapsed)
    return durations


def median_ms(durations: Sequence[float]) -> float:
    return statistics.median(durations) * 1000 if durations else 0.0
