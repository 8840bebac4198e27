"""The package version, recorded in every file the workbench writes."""

__version__ = "0.1.0"
