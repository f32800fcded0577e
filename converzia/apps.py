from django.apps import AppConfig


class ConverziaConfig(AppConfig):
    name = "converzia"
    verbose_name = "Converzia (tenancy)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connects the receivers that invalidate cached principals on user, token, membership and
        # tenant writes.
        from converzia import principal  # noqa: F401
