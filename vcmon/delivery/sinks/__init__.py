"""Sinks: where alert events go (MQTT, webhooks, Alertmanager, the console). One module per
sink, one entry in ``registry``; each sink owns its config and its errors."""
