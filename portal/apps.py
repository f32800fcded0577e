from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # health_checks: adds the tenant_stats_materialized age check to converzia.db.health (dbhealth).
        # observability: queue depth and stats-view age for readiness and /metrics
        # (converzia.observability.probes).
        from portal import health_checks, observability  # noqa: F401

        observability.register()
