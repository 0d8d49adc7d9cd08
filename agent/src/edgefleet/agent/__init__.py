"""The edgefleet device agent: pull, verify, validate, hot-swap, serve, report."""

__version__ = "0.1.0"
