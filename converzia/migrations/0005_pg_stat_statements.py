"""Create the pg_stat_statements extension when the server has it (read by `manage.py slow_queries`).

Creating the extension is harmless without the preloaded library (reads then fail with a clear message),
and the migration must not fail where the extension is not shipped or the migrating role may not create
it (a managed database where an administrator does it): it then only prints a NOTICE. Enabling the
library itself needs `shared_preload_libraries` and a restart (docs/database.md, "Slow queries").
"""

from django.db import migrations

CREATE = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pg_stat_statements not created (%): ask a superuser to run CREATE EXTENSION', SQLERRM;
        END;
    ELSE
        RAISE NOTICE 'pg_stat_statements is not available on this server; slow_queries will say how to add it';
    END IF;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("converzia", "0004_queue_table_autovacuum"),
    ]

    operations = [
        migrations.RunSQL(sql=CREATE, reverse_sql="DROP EXTENSION IF EXISTS pg_stat_statements"),
    ]
