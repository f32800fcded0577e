"""WSGI entry point (gunicorn)."""

import os

from django.core.wsgi import get_wsgi_application

from converzia.observability import otel

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "converzia.settings.local")
# Serving: connections start with the default query limits (settings DB_SESSION_TIMEOUTS).
os.environ.setdefault("DB_SESSION_TIMEOUTS", "true")

# OpenTelemetry (when OTEL_EXPORTER_OTLP_ENDPOINT is set) must instrument Django before the handler
# below loads the middleware (gunicorn --preload and forking: converzia/observability/otel.py).
otel.init_otel("web")

application = get_wsgi_application()
