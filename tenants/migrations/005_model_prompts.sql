-- Recorded prompts a call plays when its realtime model is lost: while a new session is being
-- opened (reconnect_prompt) and before the call ends when none can be (unavailable_announcement).
-- Paths of mono 16-bit PCM WAV files on the daemon's host.

ALTER TABLE client_configurations
    ADD COLUMN IF NOT EXISTS reconnect_prompt         text,
    ADD COLUMN IF NOT EXISTS unavailable_announcement text;
