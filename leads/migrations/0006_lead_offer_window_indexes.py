"""lead_offers indexes that make the stats, funnel and admin revenue counts index-only
(docs/database.md).

Built CONCURRENTLY: on a live 2M-row table a plain CREATE INDEX would block every write to
lead_offers (ingestion, transitions) for the seconds it takes.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("converzia", "0004_queue_table_autovacuum"),
        ("leads", "0005_lead_event_trace_id_length"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="leadoffer",
            index=models.Index(
                fields=["tenant", "created_at"],
                include=("status", "offer"),
                name="idx_lead_offers_tenant_created",
            ),
        ),
        AddIndexConcurrently(
            model_name="leadoffer",
            index=models.Index(
                condition=models.Q(("status", "DISQUALIFIED")),
                fields=["tenant", "disqualification_category"],
                name="idx_lead_offers_tenant_disqualified",
            ),
        ),
        AddIndexConcurrently(
            model_name="leadoffer",
            index=models.Index(
                condition=models.Q(("qualified_at__isnull", False)),
                fields=["qualified_at"],
                include=("tenant", "offer"),
                name="idx_lead_offers_qualified_at",
            ),
        ),
    ]
