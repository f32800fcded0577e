"""Low-credit alerts (credit_alerts), one per ledger entry that crosses the tenant's threshold or empties it.

The index is built with the table, in one transaction: an empty new table needs no CONCURRENTLY.
"""

import django.db.models.deletion
import django.utils.timezone
import uuid
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0002_ledger_immutable_and_order_numbers'),
        ('converzia', '0004_queue_table_autovacuum'),
    ]

    operations = [
        migrations.CreateModel(
            name='CreditAlert',
            fields=[
                ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ('alert_type', models.CharField(choices=[('LOW_CREDITS', 'Low Credits'), ('ZERO_CREDITS', 'Zero Credits')], max_length=16)),
                ('balance', models.IntegerField(help_text='The balance after the entry.')),
                ('threshold', models.PositiveIntegerField(help_text="The tenant's low-credit threshold at the time.")),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ('ledger_entry', models.OneToOneField(on_delete=django.db.models.deletion.RESTRICT, related_name='credit_alert', to='billing.creditledger')),
                ('tenant', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='credit_alerts', to='converzia.tenant')),
            ],
            options={
                'db_table': 'credit_alerts',
                'indexes': [models.Index(models.F('tenant'), models.OrderBy(models.F('created_at'), descending=True), name='idx_credit_alerts_tenant_created')],
            },
        ),
    ]
