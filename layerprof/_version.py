"""The package version, in one place (setup.py reads the same string)."""
__version__ = "0.1.0"
