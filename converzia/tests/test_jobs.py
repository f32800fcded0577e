"""`converzia.jobs.db_job`: every job gets a healthy connection that commits asynchronously."""

from __future__ import annotations

import pytest
from django.db import connection

from converzia.jobs import backoff, db_job


def synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_job_connection_commits_asynchronously_and_again_after_a_reconnect():
    job = db_job(synchronous_commit)

    assert job() == "off"
    connection.close()  # as after a database restart or CONN_MAX_AGE
    assert job() == "off"


@pytest.mark.django_db(transaction=True)
def test_a_broken_connection_is_replaced_before_the_job_runs():
    connection.ensure_connection()
    connection.connection.close()  # the server went away under this thread's connection
    connection.errors_occurred = True  # as Django marks it after a failed query

    assert db_job(synchronous_commit)() == "off"


def test_backoff_retries_database_errors_and_the_given_ones():
    class Later(Exception):
        pass

    strategy = backoff(max_attempts=3, retry_on=(Later,))

    assert strategy.max_attempts == 3
    assert {exc.__name__ for exc in strategy.retry_exceptions} == {
        "Later",
        "OperationalError",
        "InterfaceError",
    }
