"""The package version (the ground floor: importable from anywhere without a cycle)."""
__version__ = "0.1.0"
