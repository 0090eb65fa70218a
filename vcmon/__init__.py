"""vcmon: network health monitor for video-conference networks."""

__version__ = "0.1.0"
