"""Development settings: debug on, private delivery targets allowed."""

import importlib.util

from converzia.logging import logging_settings
from converzia.settings.base import *  # noqa: F403
from converzia.settings.base import env
from converzia.settings.dev_defaults import DEV_META_APP_SECRET, DEV_META_WEBHOOK_VERIFY_TOKEN

DEBUG = env.bool("DEBUG", default=True)
DELIVERY_ALLOW_PRIVATE_NETWORKS = env.bool("DELIVERY_ALLOW_PRIVATE_NETWORKS", default=True)

REST_FRAMEWORK = {
    **REST_FRAMEWORK,  # noqa: F405
    "DEFAULT_RENDERER_CLASSES": [
        "converzia.api.renderers.OrjsonRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}

# --- Observability (local development) -----------------------------------------------------------
LOG_FORMAT = env.str("LOG_FORMAT", default="console")
LOGGING = logging_settings(
    log_format=LOG_FORMAT,
    level=LOG_LEVEL,  # noqa: F405
    procrastinate_level=PROCRASTINATE_LOG_LEVEL,  # noqa: F405
)
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])

# django-debug-toolbar: development only, when DEBUG is on and the package is installed. It runs only
# for browser requests (Accept: text/html) from INTERNAL_IPS: admin and browsable API pages.
if DEBUG and importlib.util.find_spec("debug_toolbar") is not None:
    INSTALLED_APPS = [*INSTALLED_APPS, "debug_toolbar"]  # noqa: F405
    # After the request id and request metrics middleware, which stay first.
    _toolbar_at = MIDDLEWARE.index("converzia.middleware.RequestMetricsMiddleware") + 1  # noqa: F405
    MIDDLEWARE = [  # noqa: F405
        *MIDDLEWARE[:_toolbar_at],  # noqa: F405
        "debug_toolbar.middleware.DebugToolbarMiddleware",
        *MIDDLEWARE[_toolbar_at:],  # noqa: F405
    ]
    INTERNAL_IPS = ["127.0.0.1", "::1"]
    DEBUG_TOOLBAR_CONFIG = {
        "SHOW_TOOLBAR_CALLBACK": "converzia.observability.devtools.show_debug_toolbar",
        # Start as the small "DJDT" handle instead of a panel over the admin's right side; one click
        # opens it. The browser then remembers the last choice (the toolbar's localStorage `djdt.show`).
        "SHOW_COLLAPSED": True,
    }

# --- Meta (a laptop's whole ingestion path) ----------------------------------------------------------
# Signed test leads work out of the box: `make test-lead` signs with this secret, and `make run` points
# the worker at a local Graph stand-in. A real app's values in the environment win.
META_APP_SECRET = env.str("META_APP_SECRET", default=DEV_META_APP_SECRET)
META_WEBHOOK_VERIFY_TOKEN = env.str("META_WEBHOOK_VERIFY_TOKEN", default=DEV_META_WEBHOOK_VERIFY_TOKEN)
