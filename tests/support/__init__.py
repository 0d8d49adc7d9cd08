"""Test fixtures' machinery: real broker processes, MQTT probes, sample messages."""
