"""The edgefleet device agent: pull, verify, validate, hot-swap, serve, report."""

__version__ = "0.2.0"
