"""The fleet: devices as their messages describe them, their events and telemetry."""
