"""Settings shared by every environment; everything that differs comes from the environment."""

from pathlib import Path

from converzia.env import env
from converzia.logging import logging_settings

BASE_DIR = Path(__file__).resolve().parent.parent.parent

SECRET_KEY = env.str("SECRET_KEY", default="insecure-development-key-never-used-in-production")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "procrastinate.contrib.django",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "converzia",
    "leads",
    "billing",
    "deliveries",
    "portal",
]

MIDDLEWARE = [
    "converzia.middleware.RequestIdMiddleware",
    # Right after the request id: times and counts every request, by route (observability).
    "converzia.middleware.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "converzia.urls"
WSGI_APPLICATION = "converzia.wsgi.application"
AUTH_USER_MODEL = "converzia.User"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DB_STATEMENT_TIMEOUT_MS = env.int("DB_STATEMENT_TIMEOUT_MS", default=10_000)
DB_CONNECT_TIMEOUT_S = env.int("DB_CONNECT_TIMEOUT_S", default=3)
# Open connections with the guard's default limits as session settings, so a default-limit guarded read
# needs no transaction of its own (converzia/db/timeouts.py). The WSGI entry point turns it on: commands
# and the worker keep the server's defaults (a migration may run a statement for minutes).
DB_SESSION_TIMEOUTS = env.bool("DB_SESSION_TIMEOUTS", default=False)

DATABASES = {
    "default": env.db_url("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/converzia"),
}
DATABASES["default"].setdefault("OPTIONS", {})
# Django's PostgreSQL backend, with a health check that polls the socket before paying a round trip
# (converzia/db/postgresql/base.py).
DATABASES["default"]["ENGINE"] = "converzia.db.postgresql"
# A dead database must fail a request in seconds, not hang it (the webhook budget is 5 s).
DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", DB_CONNECT_TIMEOUT_S)
# Parameters travel separately from the SQL (psycopg dumps them in C, PostgreSQL prepares statements
# it sees repeatedly) instead of being quoted into the query text in Python.
# Behind a transaction-mode pooler without prepared-statement support, set DB_SERVER_SIDE_BINDING=false.
DATABASES["default"]["OPTIONS"].setdefault(
    "server_side_binding", env.bool("DB_SERVER_SIDE_BINDING", default=True)
)
# JIT compilation pays off for analytic queries that run for seconds; for this API's millisecond reads
# its compile step is pure loss (130 ms added to one whale count at 2M rows, measured).
DATABASES["default"]["OPTIONS"].setdefault("options", "-c jit=off")
# Connection reuse (docs/performance.md "Serving"): persistent connections by default; a psycopg pool
# per process with DB_POOL_SIZE > 0. Each gunicorn sync worker serves one request at a time, so a
# persistent connection is all it can use and measured as fast as the pool; the pool pays off only
# for threaded workers, where it bounds the connections to DB_POOL_SIZE per process.
DB_POOL_SIZE = env.int("DB_POOL_SIZE", default=0)
if DB_POOL_SIZE > 0:
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": 1,
        "max_size": DB_POOL_SIZE,
        # Waiting longer for a free connection than for a new one would only hide an undersized pool.
        "timeout": DB_CONNECT_TIMEOUT_S,
    }
    # Django refuses persistent connections alongside its pool: the pool keeps them open.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ----------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CACHE_KEY_PREFIX = env.str("CACHE_KEY_PREFIX", default="cvz")


def cache_settings(redis_url: str, key_prefix: str) -> dict[str, dict[str, object]]:
    """django-redis when a Redis URL is given; otherwise a local-memory cache (`make run` only)."""
    if not redis_url:
        return {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": key_prefix,
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
                # A cache outage slows the API down; it must never break it.
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }


CACHES = cache_settings(REDIS_URL, CACHE_KEY_PREFIX)
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

# --- Auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- I18n / time ----------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
DEFAULT_TENANT_TIMEZONE = "America/Argentina/Buenos_Aires"
PHONE_DEFAULT_REGION = env.str("PHONE_DEFAULT_REGION", default="AR")

# --- Static files ---------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))

# --- Integrations ---------------------------------------------------------------------------
META_APP_SECRET = env.str("META_APP_SECRET", default="")
META_WEBHOOK_VERIFY_TOKEN = env.str("META_WEBHOOK_VERIFY_TOKEN", default="")
META_GRAPH_URL = env.str("META_GRAPH_URL", default="https://graph.facebook.com/v21.0")
META_PAGE_ACCESS_TOKEN = env.str("META_PAGE_ACCESS_TOKEN", default="")
# Graph lead fetch: Meta's own documented budget per call, and how many run at once per event.
META_GRAPH_TIMEOUT_S = env.float("META_GRAPH_TIMEOUT_S", default=10.0)
META_GRAPH_CONCURRENCY = env.int("META_GRAPH_CONCURRENCY", default=8)
# Meta batches up to 1,000 changes (~300 bytes each) per POST; anything far larger is not Meta.
META_WEBHOOK_MAX_BODY_BYTES = env.int("META_WEBHOOK_MAX_BODY_BYTES", default=1_048_576)
META_WEBHOOK_MAX_CHANGES = env.int("META_WEBHOOK_MAX_CHANGES", default=1000)
# The webhook's database budget (D3: 5 s for webhook paths), so a sick database answers 503 in time.
WEBHOOK_STATEMENT_TIMEOUT_MS = env.int("WEBHOOK_STATEMENT_TIMEOUT_MS", default=2_000)
SENTRY_DSN = env.str("SENTRY_DSN", default="")
OTEL_EXPORTER_OTLP_ENDPOINT = env.str("OTEL_EXPORTER_OTLP_ENDPOINT", default="")
# Deliveries (decision D6). Private, loopback and link-local destinations are refused unless allowed
# (development and tests send to a receiver on this machine).
DELIVERY_ALLOW_PRIVATE_NETWORKS = env.bool("DELIVERY_ALLOW_PRIVATE_NETWORKS", default=False)
DELIVERY_CONNECT_TIMEOUT_S = env.float("DELIVERY_CONNECT_TIMEOUT_S", default=5.0)
# The whole send, connect to last byte read; a slower receiver counts as a failed attempt.
DELIVERY_TIMEOUT_S = env.float("DELIVERY_TIMEOUT_S", default=15.0)
# 8 attempts, waits of about 45 s × 3.3ⁿ (±20 % jitter): the last try comes about a day after the first.
DELIVERY_MAX_ATTEMPTS = env.int("DELIVERY_MAX_ATTEMPTS", default=8)
DELIVERY_BACKOFF_BASE_S = env.float("DELIVERY_BACKOFF_BASE_S", default=45.0)
DELIVERY_BACKOFF_FACTOR = env.float("DELIVERY_BACKOFF_FACTOR", default=3.3)
DELIVERY_BACKOFF_MAX_S = env.float("DELIVERY_BACKOFF_MAX_S", default=86_400.0)
# How many due deliveries one dispatcher run claims at a time, and sends concurrently.
DELIVERY_BATCH_SIZE = env.int("DELIVERY_BATCH_SIZE", default=100)
# Open connections/requests per worker process across all dispatchers.
DELIVERY_MAX_IN_FLIGHT = env.int("DELIVERY_MAX_IN_FLIGHT", default=200)
# A claimed delivery is not claimed again for this long; if its worker dies, it is resent after it.
DELIVERY_LEASE_S = env.float("DELIVERY_LEASE_S", default=60.0)
RELEASE_VERSION = env.str("RELEASE_VERSION", default="dev")

# --- Background work (procrastinate, decision D5) ----------------------------------------------
PROCRASTINATE_AUTODISCOVER_MODULE_NAME = "tasks"
# Jobs are the truth only about work in flight; the domain rows (inbox, deliveries) are the record.
# Finished jobs are deleted so the job table stays small; failed ones stay for inspection.
PROCRASTINATE_WORKER_DEFAULTS = {"delete_jobs": "successful"}
WORKER_CONCURRENCY = env.int("WORKER_CONCURRENCY", default=8)
# SIGTERM lets running jobs finish for this long, then cancels them (they are retried elsewhere).
WORKER_SHUTDOWN_GRACE_S = env.float("WORKER_SHUTDOWN_GRACE_S", default=25.0)
# A worker silent for this long is presumed dead and its running jobs are retried.
WORKER_STALLED_AFTER_S = env.float("WORKER_STALLED_AFTER_S", default=60.0)
# A worker whose database stays unreachable this long exits 3 for its supervisor; 0: it waits forever.
WORKER_GIVE_UP_AFTER_S = env.float("WORKER_GIVE_UP_AFTER_S", default=0.0)
# tenant_stats_materialized is refreshed (concurrently, one refresh at a time) this often.
STATS_REFRESH_EVERY_S = env.float("STATS_REFRESH_EVERY_S", default=60.0)
# An inbox event still pending after this long has lost its job (or keeps failing): defer it again.
INBOX_STALE_AFTER_S = env.int("INBOX_STALE_AFTER_S", default=180)

# --- API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "converzia.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only; local.py adds the browsable API for development.
    "DEFAULT_RENDERER_CLASSES": ["converzia.api.renderers.OrjsonRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "converzia.api.exception_handler.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_RATES": {
        "auth_token": env.str("AUTH_TOKEN_THROTTLE_RATE", default="10/minute"),
        "delivery_test": env.str("DELIVERY_TEST_THROTTLE_RATE", default="6/minute"),
    },
    # Proxies in front of the app that append to X-Forwarded-For (0: trust only REMOTE_ADDR), so a
    # client cannot pick its own throttling identity.
    "NUM_PROXIES": env.int("NUM_PROXIES", default=0),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Converzia API",
    "DESCRIPTION": "Multi-tenant lead management: ingestion, funnel, deliveries and credits.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Status enums of different models share field names (`status`); name their components explicitly.
    "ENUM_NAME_OVERRIDES": {
        "OfferStatusEnum": "leads.models.OfferStatus",
        "OfferApprovalStatusEnum": "leads.models.OfferApprovalStatus",
        "ErrorCodeEnum": "converzia.api.schema.error_code_choices",
        "LeadOfferStatusEnum": "leads.models.LeadOfferStatus",
        "DeliveryStatusEnum": "deliveries.models.DeliveryStatus",
    },
}

# --- Logging (observability) ----------------------------------------------------------------
# One line per event with request_id, tenant_id and user_id, PII masked (converzia/logging.py).
# LOG_FORMAT: json (default; production and CI) or console (readable; the default in local.py).
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
PROCRASTINATE_LOG_LEVEL = env.str("PROCRASTINATE_LOG_LEVEL", default="WARNING")
LOGGING = logging_settings(
    log_format=LOG_FORMAT, level=LOG_LEVEL, procrastinate_level=PROCRASTINATE_LOG_LEVEL
)

# --- Metrics and health (observability) ---------------------------------------------------------
# GET /metrics answers staff (session or token) and these client addresses or networks (CIDR). Behind
# a proxy the client address is taken from X-Forwarded-For only when NUM_PROXIES says how many
# proxies append to it (the same rule as throttling); otherwise REMOTE_ADDR.
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=[])
# Readiness reports "degraded" when tenant_stats_materialized was last refreshed longer ago than this.
HEALTH_STATS_VIEW_MAX_AGE_S = env.int("HEALTH_STATS_VIEW_MAX_AGE_S", default=600)
# The readiness database probe's own statement timeout.
HEALTH_DB_TIMEOUT_MS = env.int("HEALTH_DB_TIMEOUT_MS", default=1_000)

# Django caps index names at 30 characters for Oracle's sake; PostgreSQL allows 63, and the guide's
# index names (idx_lead_offers_tenant_status_updated, …) are longer than 30.
SILENCED_SYSTEM_CHECKS = ["models.E034"]

# --- Error reporting and tracing: Sentry, OpenTelemetry (observability) -------------------------
# Both are off, and cost nothing, unless their variable is set (SENTRY_DSN, OTEL_EXPORTER_OTLP_ENDPOINT,
# above). Sentry starts here, so every process that loads settings reports; OpenTelemetry starts in
# converzia/wsgi.py and the run_worker command (docs/observability.md).
SENTRY_ENVIRONMENT = env.str(
    "SENTRY_ENVIRONMENT", default=env.str("DJANGO_SETTINGS_MODULE", default="").rpartition(".")[2]
)
# Share of requests sent as Sentry transactions (with DB spans); 0 sends errors only.
SENTRY_TRACES_SAMPLE_RATE = env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0)
if SENTRY_DSN:
    from converzia.observability.sentry import init_sentry

    init_sentry(
        dsn=SENTRY_DSN,
        environment=SENTRY_ENVIRONMENT or "production",
        release=RELEASE_VERSION,
        traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE,
    )
if SENTRY_DSN or OTEL_EXPORTER_OTLP_ENDPOINT:
    from converzia.observability.trace_tags import install as install_trace_tags

    MIDDLEWARE = install_trace_tags(MIDDLEWARE)
