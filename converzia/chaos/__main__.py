"""`python -m converzia.chaos [--short] [--only NAME ...] [--keep]`: the private servers, then the suite.

Runs before Django is configured (like the devstack) and must not import it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from converzia.devstack import APP_DATABASE, REPO_ROOT, manage
from converzia.devstack_servers import (
    EmbeddedPostgres,
    EmbeddedValkey,
    ServerError,
    ensure_database,
    find_free_port,
    say,
)

CHAOS_SETTINGS = "converzia.settings.chaos"
DATA_DIR_VARIABLE = "CONVERZIA_CHAOS_DATA_DIR"
FIRST_POSTGRES_PORT = 35432
FIRST_VALKEY_PORT = 36379


def chaos_environment(data: Path, database_url: str, redis_url: str) -> dict[str, str]:
    """Production settings with throw-away secrets, pointed at the private servers."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PROMETHEUS")}
    environment.update(
        {
            DATA_DIR_VARIABLE: str(data),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": CHAOS_SETTINGS,
            "SECRET_KEY": secrets.token_urlsafe(40),
            "META_APP_SECRET": "chaos-" + secrets.token_hex(16),
            "META_WEBHOOK_VERIFY_TOKEN": "chaos-" + secrets.token_hex(8),
            "SECURE_SSL_REDIRECT": "false",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converzia.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep .data/chaos-<id>/ (logs) after a failure")
    arguments, passed_on = parser.parse_known_args(argv)
    data = REPO_ROOT / ".data" / f"chaos-{secrets.token_hex(4)}"
    data.mkdir(parents=True)
    postgres = EmbeddedPostgres(data, first_port=find_free_port(FIRST_POSTGRES_PORT))
    valkey = EmbeddedValkey(data, first_port=find_free_port(FIRST_VALKEY_PORT))
    exit_code = 1
    try:
        postgres.start()
        ensure_database(postgres.url(), APP_DATABASE)
        valkey.start()
        environment = chaos_environment(data, postgres.url(APP_DATABASE), valkey.url())
        exit_code = subprocess.run(
            manage("chaos", *passed_on), env=environment, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, check=False
        ).returncode
    except ServerError as error:
        say(f"chaos: a private server did not start: {error}")
    except KeyboardInterrupt:
        say("chaos: interrupted")
    finally:
        # The suite restarts both servers on the same ports; stop whichever process runs there now.
        for server in (EmbeddedValkey(data, first_port=valkey.first_port), EmbeddedPostgres(data)):
            try:
                if server.adopt_running():
                    server.stop()
            except ServerError as error:
                say(f"chaos: could not stop the private {server.name}: {error}")
        if exit_code == 0 or not arguments.keep:
            shutil.rmtree(data, ignore_errors=True)
        else:
            say(f"chaos: logs kept in {data}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
