"""Faithful stand-ins for the PBX side of a call, used by end-to-end tests and benchmarks."""
