"""Charges and refunds by `created_at` across tenants, for admin revenue (docs/database.md).

Built CONCURRENTLY, so creating it never blocks ledger writes.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("billing", "0003_credit_alerts"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="creditledger",
            index=models.Index(
                condition=models.Q(("transaction_type__in", ["CREDIT_CONSUMPTION", "CREDIT_REFUND"])),
                fields=["created_at"],
                include=("tenant", "transaction_type", "amount"),
                name="idx_credit_ledger_charges_created",
            ),
        ),
    ]
