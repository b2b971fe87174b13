"""Media benchmark: noise suppression and the call audio chain, measured on recorded speech."""
