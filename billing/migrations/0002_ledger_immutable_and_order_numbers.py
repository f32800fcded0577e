"""Ledger rows are immutable once written, and order numbers come from a race-free sequence."""

from django.db import migrations

CREATE_SQL = r"""
CREATE FUNCTION credit_ledger_reject_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'credit_ledger rows are immutable; append a correcting entry instead'
        USING ERRCODE = 'check_violation', CONSTRAINT = 'credit_ledger_immutable';
END
$$;

CREATE TRIGGER credit_ledger_immutable
    BEFORE UPDATE ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION credit_ledger_reject_update();

CREATE SEQUENCE billing_order_number_seq;
"""

DROP_SQL = r"""
DROP SEQUENCE IF EXISTS billing_order_number_seq;
DROP TRIGGER IF EXISTS credit_ledger_immutable ON credit_ledger;
DROP FUNCTION IF EXISTS credit_ledger_reject_update();
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunSQL(CREATE_SQL, reverse_sql=DROP_SQL)]
