"""Test settings: the real PostgreSQL and Redis, a fast hasher, an isolated cache prefix."""

import os

from converzia.settings.base import *  # noqa: F403
from converzia.settings.base import cache_settings, env

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DELIVERY_ALLOW_PRIVATE_NETWORKS = True
META_APP_SECRET = "test-app-secret"
META_WEBHOOK_VERIFY_TOKEN = "test-verify-token"

# Tests always run against a real Redis (never a local-memory stand-in); each run gets its own
# key prefix so no run sees another's cache.
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = cache_settings(REDIS_URL, f"cvz-test-{os.getpid()}")
