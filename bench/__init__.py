"""Reproducible benchmarks of vcmon against its peers; each module runs with ``python -m``."""
