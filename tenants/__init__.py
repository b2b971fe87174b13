"""Tenant directory: which agent answers a dialled number."""
