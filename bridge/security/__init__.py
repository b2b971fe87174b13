"""Who may place a call: source-network allow-lists, per-source set-up rates, media credentials
(per-tenant tokens, Twilio request signatures), ``Origin`` checks, and signing keys."""
