"""The edgefleet controller: compress, register, publish, roll out, watch."""

__version__ = "0.2.0"
