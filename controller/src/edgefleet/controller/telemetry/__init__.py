"""Telemetry history: rollup tables, the rollup/retention task and series queries for charts."""

from edgefleet.controller.telemetry.history import HistoryKeeper, RetentionPolicy
from edgefleet.controller.telemetry.series import DeviceSeries, query_series

__all__ = ["DeviceSeries", "HistoryKeeper", "RetentionPolicy", "query_series"]
