"""The controller's MQTT side: one reconnecting connection and the embedded broker."""
