"""The admin's "Database" page (/admin/database/): staff only, the same checks and slow queries as the
commands, and a CSRF-protected reset that only superusers may use."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from converzia.db.stat_statements import slow_queries, stat_statements_reset
from converzia.tests.factories import StaffUserFactory, UserFactory
from converzia.tests.test_admin import messages_of

pytestmark = pytest.mark.django_db

URL = "/admin/database/"
PROBE = "dbh_admin_probe"


def run_probe(times: int = 1) -> None:
    with connection.cursor() as cursor:
        for _ in range(times):
            cursor.execute(f"SELECT count(*) AS {PROBE} FROM tenants WHERE slug = %s", ["x"])


def probe_listed() -> bool:
    return any(PROBE in s.query for s in slow_queries(order="calls", limit=1000).statements)


@pytest.fixture
def superuser():
    return StaffUserFactory(is_superuser=True)


def test_the_url_is_named():
    assert reverse("admin_database") == URL


def test_anonymous_and_non_staff_are_sent_to_the_login(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")

    client.force_login(UserFactory())
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert client.post(URL).status_code == 302


@pytest.mark.usefixtures("needs_pg_stat_statements")
def test_staff_see_the_checks_and_the_slow_queries(client, staff_user):
    stat_statements_reset()  # this database's counters only: earlier tests' statements drop out
    run_probe(times=200)  # now the most called statement of the test database, by far
    client.force_login(staff_user)
    response = client.get(URL, {"order": "calls"})

    assert response.status_code == 200
    html = response.content.decode()
    for name in ("duplicate_indexes", "invalid_indexes", "blocked_queries", "connections", "stats_view"):
        assert f'id="check-{name}"' in html
    assert 'id="slow-queries"' in html
    assert PROBE in html
    # Not a superuser: no reset button.
    assert 'id="reset-stat-statements"' not in html
    assert [r.name for r in response.context["results"]][0] == "duplicate_indexes"


def test_the_admin_index_links_to_the_page(client, staff_user):
    client.force_login(staff_user)
    html = client.get("/admin/").content.decode()
    assert f'href="{URL}"' in html


def test_order_parameter(client, staff_user):
    client.force_login(staff_user)
    assert client.get(URL, {"order": "mean"}).context["order"] == "mean"
    assert client.get(URL, {"order": "bogus"}).context["order"] == "total"


@pytest.mark.usefixtures("needs_pg_stat_statements")
def test_staff_who_are_not_superusers_cannot_reset(client, staff_user):
    run_probe()
    client.force_login(staff_user)
    assert client.post(URL).status_code == 403
    assert probe_listed()


@pytest.mark.usefixtures("needs_pg_stat_statements")
def test_superusers_reset_with_the_csrf_token():
    run_probe()
    user = StaffUserFactory(is_superuser=True)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    page = client.get(URL)
    assert 'id="reset-stat-statements"' in page.content.decode()
    # Without the token: refused, nothing reset.
    assert client.post(URL).status_code == 403
    assert probe_listed()

    token = page.context["csrf_token"]
    response = client.post(URL, {"csrfmiddlewaretoken": str(token)})
    assert response.status_code == 302
    assert response["Location"] == URL
    assert any("pg_stat_statements reset" in m for m in messages_of(client.get(URL)))
    assert not probe_listed()


def test_without_the_extension_the_page_explains_how_to_enable_it(client, superuser):
    with connection.cursor() as cursor:
        cursor.execute("DROP EXTENSION pg_stat_statements")  # rolled back with the test
    client.force_login(superuser)
    response = client.get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="stat-statements-unavailable"' in html
    assert "shared_preload_libraries" in html and "CREATE EXTENSION" in html
    assert 'id="dbhealth"' in html
