"""The edgefleet controller: compress, register, publish, roll out, watch."""

__version__ = "0.1.0"
