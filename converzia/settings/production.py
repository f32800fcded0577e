"""Production settings: refuse to start without secrets; everything else from the environment."""

from converzia.env import require
from converzia.settings.base import *  # noqa: F403
from converzia.settings.base import MIDDLEWARE, env

DEBUG = False
SECRET_KEY = require("SECRET_KEY")
META_APP_SECRET = require("META_APP_SECRET")
META_WEBHOOK_VERIFY_TOKEN = require("META_WEBHOOK_VERIFY_TOKEN")
require("DATABASE_URL")
DELIVERY_ALLOW_PRIVATE_NETWORKS = False

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True

# Static files (the admin, the API docs): `collectstatic` writes them under content-hashed names, with
# gzip copies, and WhiteNoise serves them from the app itself with a year's `Cache-Control: public,
# immutable`, so a CDN or a browser keeps each one until its name changes (the guide's "edge caching
# for static assets"); unhashed names get 60 s. Right after SecurityMiddleware, as WhiteNoise asks.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
MIDDLEWARE = [
    *MIDDLEWARE[: MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1],
    "whitenoise.middleware.WhiteNoiseMiddleware",
    *MIDDLEWARE[MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1 :],
]
