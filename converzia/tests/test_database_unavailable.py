"""A database that cannot be reached answers 503 `unavailable` in the API's error shape, never a 500."""

from __future__ import annotations

import psycopg
import pytest
from django.db import DataError, OperationalError

from converzia.api.exception_handler import database_unreachable
from converzia.tests.outages import database_down


def _wrapped(cause: Exception, wrapper: type[Exception] = OperationalError) -> Exception:
    error = wrapper(str(cause))
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "unreachable"),
    [
        (_wrapped(psycopg.OperationalError("connection refused")), True),
        (_wrapped(psycopg.InterfaceError("the connection is closed")), True),
        (_wrapped(psycopg.errors.lookup("08006")("connection failure")), True),
        (_wrapped(psycopg.errors.AdminShutdown("terminating connection")), True),
        # A query timeout is the guard's business, not an outage.
        (_wrapped(psycopg.errors.QueryCanceled("statement timeout")), False),
        (_wrapped(psycopg.errors.DeadlockDetected("deadlock detected")), False),
        (_wrapped(psycopg.errors.NumericValueOutOfRange("out of range"), DataError), False),
        (ValueError("not a database error"), False),
    ],
)
def test_what_counts_as_an_unreachable_database(error, unreachable):
    assert database_unreachable(error) is unreachable


@pytest.mark.django_db(transaction=True)
def test_an_authenticated_read_with_the_database_down_is_503_with_retry_after(tenant, owner, client_for):
    client = client_for(owner)
    assert client.get("/api/portal/leads").status_code == 200

    with database_down():
        response = client.get("/api/portal/leads")

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    error = response.json()["error"]
    assert error["code"] == "unavailable"
    assert error["request_id"]
    # The connection is back for the next request.
    assert client.get("/api/portal/leads").status_code == 200
