from django.apps import AppConfig


class ConverziaConfig(AppConfig):
    name = "converzia"
    verbose_name = "Converzia (tenancy)"
    default_auto_field = "django.db.models.BigAutoField"
