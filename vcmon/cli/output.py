"""What every command shares: the rich consoles (the cli package is the only rich user), the
exit codes, and a config loaded with its problems printed."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from rich.console import Console

from vcmon.config import Config, ConfigError, load_config

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2  # bad arguments or a bad config

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def load(path: str) -> Config:
    """The config at ``path``, its warnings printed; a bad config exits with EXIT_USAGE."""
    try:
        config = load_config(Path(path))
    except ConfigError as exc:
        err.print(str(exc), markup=False)
        raise SystemExit(EXIT_USAGE) from None
    for warning in config.warnings:
        err.print(f"warning: {warning}", markup=False)
    return config
