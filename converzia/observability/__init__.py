"""Observability beyond logging (converzia/logging.py): Prometheus exposition (`/metrics`), readiness
(`/api/health`), the probes other apps register for both (queue depth, stats view age), and the Sentry
and OpenTelemetry set-up. See docs/observability.md."""
