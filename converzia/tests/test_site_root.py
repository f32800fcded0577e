"""The site root: the index page at `/`, `/favicon.ico`, and the development debug toolbar's default."""

from __future__ import annotations

import json

import pytest
from django.contrib.staticfiles import finders
from django.test import Client, override_settings
from django.urls import resolve

from converzia.tests.test_settings import production_env, run_python
from converzia.views import FAVICON_MAX_AGE_S, home

ICO_MAGIC = b"\x00\x00\x01\x00"  # ICONDIR: reserved 0, type 1 (icon)
LINKS = ["/admin/", "/api/docs/", "/api/schema/", "/api/health/live", "/api/health", "/metrics"]


@pytest.mark.django_db
def test_index_page_links_the_entry_points_without_a_query(client: Client, django_assert_num_queries) -> None:
    with django_assert_num_queries(0):
        response = client.get("/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "<title>Converzia</title>" in html
    for link in LINKS:
        assert f'href="{link}"' in html or f"<code>{link}</code>" in html, link
    assert "Try it" in html
    assert 'rel="icon" href="/favicon.ico"' in html
    # Self-contained: no CDN, no scripts.
    assert "<script" not in html
    assert "https://" not in html


@pytest.mark.django_db
def test_index_page_costs_no_query_for_a_signed_in_user(
    admin_client: Client, django_assert_num_queries
) -> None:
    """The session cookie is never read: the page does not depend on who asks."""
    with django_assert_num_queries(0):
        response = admin_client.get("/")

    assert response.status_code == 200


# Production's static storage needs collectstatic's manifest: a `{% static %}` in the page would fail here.
@override_settings(
    DEBUG=False,
    STORAGES={
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    },
)
def test_index_page_and_favicon_need_neither_debug_nor_collected_static(client: Client) -> None:
    assert client.get("/").status_code == 200
    assert client.get("/favicon.ico").status_code == 200


PRINT_ROOT = (
    "import django, json; django.setup(); from django.test import Client; "
    "c = Client(HTTP_HOST='api.converzia.example'); "
    "pages = [c.get(p, secure=True) for p in ('/', '/favicon.ico')]; "
    "print(json.dumps([[r.status_code, r['Content-Type']] for r in pages]))"
)


def test_index_page_and_favicon_under_production_settings_without_a_database() -> None:
    """The real production settings, with a DATABASE_URL nothing listens on: any query would fail."""
    env = production_env(DATABASE_URL="postgres://postgres@127.0.0.1:9/unreachable")

    result = run_python(["-c", PRINT_ROOT], env)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        [200, "text/html; charset=utf-8"],
        [200, "image/x-icon"],
    ]


def test_index_page_answers_only_safe_methods(client: Client) -> None:
    assert client.head("/").status_code == 200
    assert client.post("/").status_code == 405


@pytest.mark.django_db
def test_admin_view_site_links_to_the_index_page(admin_client: Client) -> None:
    response = admin_client.get("/admin/")

    assert response.status_code == 200
    assert response.context["site_url"] == "/"
    assert '<a href="/">View site</a>' in response.content.decode()
    assert resolve("/").func is home


@pytest.mark.django_db
def test_favicon_is_an_icon_cached_for_a_week(client: Client, django_assert_num_queries) -> None:
    with django_assert_num_queries(0):
        response = client.get("/favicon.ico")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/x-icon"
    assert response.content.startswith(ICO_MAGIC)
    cache_control = {part.strip() for part in response["Cache-Control"].split(",")}
    assert cache_control == {"public", f"max-age={FAVICON_MAX_AGE_S}"}


def test_favicon_is_a_static_file_too() -> None:
    """collectstatic ships it (converzia/static/), for pages that link it by its static URL."""
    found = finders.find("converzia/favicon.ico")

    assert found is not None
    with open(found, "rb") as icon:
        assert icon.read(4) == ICO_MAGIC


PRINT_TOOLBAR = (
    "import django, json, re; django.setup(); from django.test import Client; "
    "r = Client(HTTP_HOST='api.converzia.example').get('/', headers={'accept': 'text/html'}); "
    "print(json.dumps([r.status_code, re.findall(r'data-default-show=.(\\w+).', r.content.decode())]))"
)


def test_development_debug_toolbar_starts_collapsed() -> None:
    """Under the local settings the installed toolbar renders on a page (here `/`) collapsed to its
    handle: its script shows the full toolbar only when `data-default-show` is "true" (or the browser
    remembers the user opening it)."""
    env = production_env(
        DJANGO_SETTINGS_MODULE="converzia.settings.local",
        DATABASE_URL="postgres://postgres@127.0.0.1:9/unreachable",
    )

    result = run_python(["-c", PRINT_TOOLBAR], env)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [200, ["false"]]
