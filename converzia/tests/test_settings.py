"""Production settings fail fast without their secrets, and pass Django's deploy checklist when complete.

Each case starts a fresh interpreter with a controlled environment (nothing inherited but PATH), the way
a container starts the app.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("SECRET_KEY", "META_APP_SECRET", "META_WEBHOOK_VERIFY_TOKEN", "DATABASE_URL")


def production_env(**overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "converzia.settings.production",
        # Long, random and without Django's "django-insecure-" prefix, as check --deploy wants.
        "SECRET_KEY": secrets.token_urlsafe(64),
        "META_APP_SECRET": secrets.token_hex(16),
        "META_WEBHOOK_VERIFY_TOKEN": secrets.token_hex(16),
        # Only parsed here: neither setup() nor check --deploy opens a connection.
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/converzia"),
        "ALLOWED_HOSTS": "api.converzia.example",
    }
    env.update(overrides)
    return {key: value for key, value in env.items() if value is not None}


def run_python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("missing", REQUIRED)
def test_production_refuses_to_start_without_each_secret(missing):
    env = production_env()
    del env[missing]
    result = run_python(["-c", "import django; django.setup()"], env)
    assert result.returncode != 0
    assert f"The environment variable {missing} must be set in production." in result.stderr
    assert "ImproperlyConfigured" in result.stderr


@pytest.mark.parametrize("missing", REQUIRED)
def test_an_empty_secret_counts_as_missing(missing):
    result = run_python(["-c", "import django; django.setup()"], production_env(**{missing: ""}))
    assert result.returncode != 0
    assert f"The environment variable {missing} must be set in production." in result.stderr


def test_complete_production_settings_start():
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.DEBUG, settings.DELIVERY_ALLOW_PRIVATE_NETWORKS, settings.SECURE_SSL_REDIRECT)"
    )
    result = run_python(["-c", code], production_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "True"]


def test_check_deploy_passes_with_no_warnings():
    # --fail-level WARNING turns any warning into a non-zero exit, so "0" means zero warnings.
    result = run_python(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_serves_collected_static_files_under_hashed_names_with_far_future_caching(tmp_path):
    """collectstatic writes hashed (and gzipped) copies; the app serves them with a year's immutable
    Cache-Control, while an unhashed name may change and gets a short one."""
    env = production_env(STATIC_ROOT=str(tmp_path / "static"))
    # The storage brotli-compresses every file at its slowest setting: collecting everything costs
    # ~45 s of CPU (the API docs' Swagger UI and ReDoc bundles with their source maps ~30 s, DRF's
    # browsable-API assets ~5 s), which a busy box stretched past the 120 s timeout. What is checked
    # here (hashed names, gzip copies, headers) needs only the admin's files: ~5 s.
    ignored = ["--ignore", "drf_spectacular_sidecar", "--ignore", "rest_framework"]
    collected = run_python(["manage.py", "collectstatic", "--noinput", "-v", "0", *ignored], env)
    assert collected.returncode == 0, collected.stderr
    manifest = (tmp_path / "static" / "staticfiles.json").read_text()
    hashed = json.loads(manifest)["paths"]["admin/css/base.css"]
    assert hashed != "admin/css/base.css" and (tmp_path / "static" / (hashed + ".gz")).exists()

    code = (
        "import django, sys; django.setup(); from django.test import Client;"
        "client = Client(SERVER_NAME='api.converzia.example');"
        "r = client.get(sys.argv[1], secure=True, headers={'Accept-Encoding': 'gzip'});"
        "print(r.status_code, r.headers.get('Content-Encoding'), r.headers['Cache-Control'], sep='|')"
    )
    served = run_python(["-c", code, f"/static/{hashed}"], env)
    plain = run_python(["-c", code, "/static/admin/css/base.css"], env)

    assert served.returncode == 0, served.stderr
    status, encoding, cache_control = served.stdout.strip().split("|")
    assert (status, encoding) == ("200", "gzip")
    assert "immutable" in cache_control and "max-age=315360000" in cache_control
    assert plain.stdout.strip().split("|")[2] == "max-age=60, public"


def test_db_pool_size_switches_persistent_connections_to_a_psycopg_pool(db, settings):
    # The subprocess connects for real, so it gets the test database (which the `db` fixture creates).
    database = settings.DATABASES["default"]
    database_url = (
        f"postgres://{database['USER']}@{database['HOST'] or '127.0.0.1'}:{database['PORT'] or 5432}"
        f"/{database['NAME']}"
    )
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        "from django.db import connection; db = settings.DATABASES['default']; "
        "connection.ensure_connection(); "
        "print(json.dumps([db['CONN_MAX_AGE'], db['OPTIONS'].get('pool'), connection.pool is not None]))"
    )
    pooled = run_python(["-c", code], production_env(DATABASE_URL=database_url, DB_POOL_SIZE="4"))
    assert pooled.returncode == 0, pooled.stderr
    conn_max_age, pool, connected_through_pool = json.loads(pooled.stdout)
    assert conn_max_age == 0
    assert pool == {"min_size": 1, "max_size": 4, "timeout": 3}
    assert connected_through_pool is True

    persistent = run_python(["-c", code], production_env(DATABASE_URL=database_url))
    assert persistent.returncode == 0, persistent.stderr
    assert json.loads(persistent.stdout) == [60, None, False]
