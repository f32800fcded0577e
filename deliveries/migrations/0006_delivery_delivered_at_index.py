"""Completed deliveries by `delivered_at` across tenants, for admin revenue (docs/database.md).

Built CONCURRENTLY, so creating it never blocks the dispatcher's writes.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("deliveries", "0005_delivery_dispatch_lease"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("delivered_at__isnull", False)),
                fields=["delivered_at"],
                include=("tenant", "offer"),
                name="idx_deliveries_delivered_at",
            ),
        ),
    ]
