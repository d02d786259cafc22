"""dbguard's benchmark suite: `.venv/bin/python -m bench.run` (see bench/README.md)."""
