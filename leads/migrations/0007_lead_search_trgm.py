"""Lead search (`?q=` on the portal's lead list) served by a trigram index (docs/database.md).

`lead_search_text(...)` is the one text a search matches: upper-cased name parts, email and phone.
It is an IMMUTABLE SQL function over the columns alone, so the index expression and the query's
expression are the same call with no bound parameter inside (a parameter would stop PostgreSQL from
matching the query to the index under a generic plan). pg_trgm's GIN operator class answers
`LIKE '%…%'` from the index; without it every search read all leads (1.2–3.7 s at 2M lead_offers).
"""

from django.db import migrations

SEARCH_FUNCTION = """
CREATE OR REPLACE FUNCTION lead_search_text(
    full_name text, first_name text, last_name text, email text, phone text
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN upper(full_name || ' ' || first_name || ' ' || last_name || ' ' || email || ' ' || phone)
"""


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("leads", "0006_lead_offer_window_indexes"),
    ]

    operations = [
        # pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may create it. Reversing
        # drops it after the index that needs it (RESTRICT: it stays if anything else uses it).
        migrations.RunSQL(
            "CREATE EXTENSION IF NOT EXISTS pg_trgm", reverse_sql="DROP EXTENSION IF EXISTS pg_trgm RESTRICT"
        ),
        migrations.RunSQL(
            SEARCH_FUNCTION,
            reverse_sql="DROP FUNCTION IF EXISTS lead_search_text(text, text, text, text, text)",
        ),
        migrations.RunSQL(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_leads_search_trgm ON leads"
            " USING gin (lead_search_text(full_name, first_name, last_name, email, phone) gin_trgm_ops)",
            reverse_sql="DROP INDEX CONCURRENTLY IF EXISTS idx_leads_search_trgm",
        ),
    ]
