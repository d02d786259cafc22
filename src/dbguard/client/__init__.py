"""Clients of the daemon: shim.py (stdlib only, for shims) and talk.py (for dbguardctl)."""
