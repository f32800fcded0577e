"""The lead_offer transition matrix in the database, so even `QuerySet.update()` cannot break it.

The trigger also maintains `previous_status`, `status_changed_at` and the first `qualified_at`,
whoever changes the status. The matrix mirrors `leads.transitions.ALLOWED_TRANSITIONS` (a test
compares the two pair by pair); changing it means a new migration that replaces the function.
"""

from django.db import migrations

CREATE_SQL = r"""
CREATE FUNCTION lead_offers_allowed_targets(from_status text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE from_status
        WHEN 'PENDING_MAPPING'   THEN ARRAY['TO_BE_CONTACTED','DISQUALIFIED','STOPPED']
        WHEN 'TO_BE_CONTACTED'   THEN ARRAY['CONTACTED','COOLING','STOPPED','DISQUALIFIED']
        WHEN 'CONTACTED'         THEN ARRAY['ENGAGED','COOLING','STOPPED','DISQUALIFIED']
        WHEN 'ENGAGED'           THEN ARRAY['QUALIFYING','COOLING','STOPPED','DISQUALIFIED','HUMAN_HANDOFF']
        WHEN 'QUALIFYING'        THEN ARRAY['SCORED','LEAD_READY','COOLING','STOPPED','DISQUALIFIED','HUMAN_HANDOFF']
        WHEN 'SCORED'            THEN ARRAY['LEAD_READY','QUALIFYING','COOLING','STOPPED','DISQUALIFIED']
        WHEN 'LEAD_READY'        THEN ARRAY['SENT_TO_DEVELOPER','STOPPED','DISQUALIFIED']
        WHEN 'SENT_TO_DEVELOPER' THEN ARRAY['STOPPED']
        WHEN 'COOLING'           THEN ARRAY['REACTIVATION','STOPPED','DISQUALIFIED']
        WHEN 'REACTIVATION'      THEN ARRAY['CONTACTED','ENGAGED','STOPPED','DISQUALIFIED']
        WHEN 'DISQUALIFIED'      THEN ARRAY['REACTIVATION']
        WHEN 'STOPPED'           THEN ARRAY[]::text[]
        WHEN 'HUMAN_HANDOFF'     THEN ARRAY['QUALIFYING','LEAD_READY','STOPPED','DISQUALIFIED']
    END
$$;

CREATE FUNCTION lead_offers_on_status_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    allowed text[];
BEGIN
    allowed := lead_offers_allowed_targets(OLD.status);
    IF allowed IS NULL OR NOT (NEW.status = ANY (allowed)) THEN
        RAISE EXCEPTION 'invalid lead_offer transition % -> %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'lead_offers_status_transition',
                  DETAIL = 'allowed: ' || coalesce(array_to_string(allowed, ','), '');
    END IF;
    NEW.previous_status := OLD.status;
    NEW.status_changed_at := now();
    IF NEW.status = 'LEAD_READY' AND NEW.qualified_at IS NULL THEN
        NEW.qualified_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER lead_offers_status_transition
    BEFORE UPDATE OF status ON lead_offers
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION lead_offers_on_status_change();
"""

DROP_SQL = r"""
DROP TRIGGER IF EXISTS lead_offers_status_transition ON lead_offers;
DROP FUNCTION IF EXISTS lead_offers_on_status_change();
DROP FUNCTION IF EXISTS lead_offers_allowed_targets(text);
"""


class Migration(migrations.Migration):
    dependencies = [("leads", "0001_initial")]

    operations = [migrations.RunSQL(CREATE_SQL, reverse_sql=DROP_SQL)]
