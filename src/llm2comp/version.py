"""The package version, in a module of its own (model.py and export.py read it without importing the package
root, which imports them)."""

__version__ = "0.1.0"
