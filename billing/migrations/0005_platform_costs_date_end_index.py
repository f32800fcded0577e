"""The periods of ad spend that overlap a date range, index-only, for admin revenue (docs/database.md).

Built CONCURRENTLY, so creating it never blocks the platform cost sync.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("billing", "0004_credit_ledger_charges_index"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="platformcost",
            index=models.Index(
                fields=["date_end"],
                include=("date_start", "tenant", "offer", "spend"),
                name="idx_platform_costs_date_end",
            ),
        ),
    ]
