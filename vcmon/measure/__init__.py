"""Measurement: the scheduler, the probes, one round's statistics, the results, the resolver."""
