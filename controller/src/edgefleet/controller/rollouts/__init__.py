"""Rollouts: waves, telemetry gates, and the engine that drives them from the database."""
