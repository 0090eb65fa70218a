"""The alert engine: health states, alert rules, topology, silences and the durable event log.

Decisions (``health``, ``quality``, ``engine``) are pure and synchronous; ``store`` and
``runtime`` are the I/O around them.
"""
