-- Tenant tables: clients, their numbers, their agent configuration.
--
-- The three tables are the ones Supabase deployments of this kind already hold. On such a database
-- the CREATE TABLE statements do nothing and the ALTER TABLE statements add only the columns that
-- are missing, so existing rows and columns are kept as they are.

CREATE TABLE IF NOT EXISTS clients (
    client_id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    client_name text NOT NULL,
    active      boolean NOT NULL DEFAULT true
);

ALTER TABLE clients
    ADD COLUMN IF NOT EXISTS slug       text,
    ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();

-- Slugs name tenants in logs, metrics and the CLI; rows without one get a name-derived slug.
CREATE UNIQUE INDEX IF NOT EXISTS clients_slug_key ON clients (slug);

CREATE TABLE IF NOT EXISTS client_sip_numbers (
    -- E.164 number ("+5511999990001"), extension ("1001"), or prefix pattern ("+55119999900*").
    sip_number text PRIMARY KEY,
    client_id  uuid NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    active     boolean NOT NULL DEFAULT true
);

CREATE INDEX IF NOT EXISTS client_sip_numbers_client_id_idx ON client_sip_numbers (client_id);

CREATE TABLE IF NOT EXISTS client_configurations (
    client_id    uuid PRIMARY KEY REFERENCES clients (client_id) ON DELETE CASCADE,
    voice        text,
    temperature  double precision,
    max_tokens   integer,
    instructions text
);

-- One column per tenant setting (tenants/config.py, TenantConfig); NULL means the documented
-- default. Settings without a column of their own go into "settings".
ALTER TABLE client_configurations
    ADD COLUMN IF NOT EXISTS provider                   text,
    ADD COLUMN IF NOT EXISTS model                      text,
    ADD COLUMN IF NOT EXISTS speed                      double precision,
    ADD COLUMN IF NOT EXISTS language                   text,
    ADD COLUMN IF NOT EXISTS greeting                   text,
    ADD COLUMN IF NOT EXISTS turn_detection             jsonb,
    ADD COLUMN IF NOT EXISTS transcription              boolean,
    ADD COLUMN IF NOT EXISTS transcription_model        text,
    ADD COLUMN IF NOT EXISTS noise_suppression          text,
    ADD COLUMN IF NOT EXISTS noise_suppression_level_db integer,
    ADD COLUMN IF NOT EXISTS model_noise_reduction      text,
    ADD COLUMN IF NOT EXISTS audio_mode                 text,
    ADD COLUMN IF NOT EXISTS recording                  boolean,
    ADD COLUMN IF NOT EXISTS retention_days             integer,
    ADD COLUMN IF NOT EXISTS max_call_duration          double precision,
    ADD COLUMN IF NOT EXISTS max_concurrent_calls       integer,
    ADD COLUMN IF NOT EXISTS transfer_targets           jsonb,
    ADD COLUMN IF NOT EXISTS dtmf_transfer_digit        text,
    ADD COLUMN IF NOT EXISTS webhook_url                text,
    ADD COLUMN IF NOT EXISTS webhook_secret             text,
    ADD COLUMN IF NOT EXISTS settings                   jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN IF NOT EXISTS updated_at                 timestamptz NOT NULL DEFAULT now();
