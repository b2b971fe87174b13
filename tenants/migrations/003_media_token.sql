-- Per-tenant credential of WebSocket media clients (TenantConfig.media_token). NULL: none set.
ALTER TABLE client_configurations
    ADD COLUMN IF NOT EXISTS media_token text;
