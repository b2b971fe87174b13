"""Load benchmark of the whole daemon: ``python -m bench.load`` (see bench/README.md)."""
