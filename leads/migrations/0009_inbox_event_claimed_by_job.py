"""The job holding an inbox event (a drain, or the event's own retry job): see leads/ingestion.py.

A nullable column without a default: adding it rewrites nothing and takes its lock for an instant.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("leads", "0008_lead_offer_counts"),
    ]

    operations = [
        migrations.AddField(
            model_name="inboxevent",
            name="claimed_by_job",
            field=models.BigIntegerField(blank=True, null=True),
        ),
    ]
