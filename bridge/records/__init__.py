"""Call records: the stereo recorder and its writer thread, the archive, the call index, object storage, webhooks."""
