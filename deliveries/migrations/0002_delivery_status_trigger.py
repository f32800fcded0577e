"""The delivery state machine in the database (mirrors `deliveries.models.DELIVERY_TRANSITIONS`).

Unlike v1's dead-letter guard, a dead letter can be retried (→ PENDING) as well as refunded.
"""

from django.db import migrations

CREATE_SQL = r"""
CREATE FUNCTION deliveries_on_status_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    allowed text[];
BEGIN
    allowed := CASE OLD.status
        WHEN 'PENDING'     THEN ARRAY['DELIVERED','PARTIAL','FAILED','DEAD_LETTER']
        WHEN 'FAILED'      THEN ARRAY['PENDING','DELIVERED','PARTIAL','DEAD_LETTER']
        WHEN 'PARTIAL'     THEN ARRAY['DELIVERED','REFUNDED']
        WHEN 'DELIVERED'   THEN ARRAY['REFUNDED']
        WHEN 'DEAD_LETTER' THEN ARRAY['PENDING','REFUNDED']
        ELSE ARRAY[]::text[]
    END;
    IF NOT (NEW.status = ANY (allowed)) THEN
        RAISE EXCEPTION 'invalid delivery transition % -> %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'deliveries_status_transition',
                  DETAIL = 'allowed: ' || array_to_string(allowed, ',');
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER deliveries_status_transition
    BEFORE UPDATE OF status ON deliveries
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION deliveries_on_status_change();
"""

DROP_SQL = r"""
DROP TRIGGER IF EXISTS deliveries_status_transition ON deliveries;
DROP FUNCTION IF EXISTS deliveries_on_status_change();
"""


class Migration(migrations.Migration):
    dependencies = [("deliveries", "0001_initial")]

    operations = [migrations.RunSQL(CREATE_SQL, reverse_sql=DROP_SQL)]
