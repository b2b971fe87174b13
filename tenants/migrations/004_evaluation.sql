-- Post-call evaluation, keypad input during a response and simulator cues, per tenant
-- (tenants/evaluation.py, tenants/simulation.py, TenantConfig.dtmf_during_response).

ALTER TABLE client_configurations
    ADD COLUMN IF NOT EXISTS evaluation           jsonb,
    ADD COLUMN IF NOT EXISTS simulator            jsonb,
    ADD COLUMN IF NOT EXISTS dtmf_during_response text;
