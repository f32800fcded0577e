"""The periodic refresh of tenant_stats_materialized."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction

from converzia.db.locks import AdvisoryLock, advisory_xact_lock_try
from converzia.jobs import every_seconds_cron
from portal.models import StatsViewRefresh
from portal.tasks import refresh_tenant_stats


@pytest.mark.parametrize(
    ("seconds", "cron"),
    [
        (5, "* * * * * */5"),
        (30, "* * * * * */30"),
        (60, "* * * * *"),
        (90, "*/2 * * * *"),
        (300, "*/5 * * * *"),
    ],
)
def test_every_seconds_cron(seconds, cron):
    assert every_seconds_cron(seconds) == cron


@pytest.mark.django_db(transaction=True)
def test_the_periodic_task_refreshes_the_view_and_records_when():
    assert refresh_tenant_stats(timestamp=0) is True
    assert StatsViewRefresh.objects.filter(view_name="tenant_stats_materialized").exists()


@pytest.mark.django_db(transaction=True)
def test_the_periodic_task_skips_while_another_refresh_runs():
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with transaction.atomic():
            assert advisory_xact_lock_try(AdvisoryLock.TENANT_STATS_REFRESH)
            held.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert held.wait(10)
        assert refresh_tenant_stats(timestamp=0) is False
    finally:
        release.set()
        holder.join()
