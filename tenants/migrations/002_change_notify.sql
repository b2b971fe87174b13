-- Change notification: every statement that changes a tenant table sends NOTIFY on channel
-- "callbridge_tenants", so running daemons drop cached answers and the next call sees the edit.
--
-- Statement-level triggers: a bulk import sends one notification per statement, not per row.
-- The payload names the table and the operation, e.g. {"table": "clients", "op": "UPDATE"}.

CREATE OR REPLACE FUNCTION callbridge_notify_tenant_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('callbridge_tenants',
                      json_build_object('table', TG_TABLE_NAME, 'op', TG_OP)::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS callbridge_notify ON clients;
CREATE TRIGGER callbridge_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON clients
    FOR EACH STATEMENT EXECUTE FUNCTION callbridge_notify_tenant_change();

DROP TRIGGER IF EXISTS callbridge_notify ON client_sip_numbers;
CREATE TRIGGER callbridge_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON client_sip_numbers
    FOR EACH STATEMENT EXECUTE FUNCTION callbridge_notify_tenant_change();

DROP TRIGGER IF EXISTS callbridge_notify ON client_configurations;
CREATE TRIGGER callbridge_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON client_configurations
    FOR EACH STATEMENT EXECUTE FUNCTION callbridge_notify_tenant_change();
