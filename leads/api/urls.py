"""Routes under /api/webhooks/."""

from django.urls import path

from leads.api.webhooks import MetaLeadsWebhookView

urlpatterns = [
    path("meta-leads", MetaLeadsWebhookView.as_view(), name="webhook-meta-leads"),
]
