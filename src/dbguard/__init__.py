"""dbguard: no database command runs before a verified backup of what it can touch."""

__version__ = "0.1.0"
