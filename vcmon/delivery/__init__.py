"""Delivery: the durable outbox, grouping for people, routing, and the sinks."""
