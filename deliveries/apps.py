from django.apps import AppConfig


class DeliveriesConfig(AppConfig):
    name = "deliveries"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Billing announces credits; deliveries waiting for them resume (billing never imports us).
        from billing.signals import balance_increased
        from deliveries.services.lifecycle import on_balance_increased

        balance_increased.connect(on_balance_increased, dispatch_uid="deliveries.resume_on_credits")
