"""Config: YAML files validated into frozen, typed objects, with errors a network admin can act on.

A config file holds top-level settings, inline ``endpoints`` and ``inventory`` files (each with
its own ``endpoints`` list) that are concatenated with them. Every problem found is reported
at once, each as ``file:line:column: path: what is wrong (what was expected)``.

Modules, each importing only those above it:

- ``problems``: Problem, ConfigError, field paths and "did you mean".
- ``files``: reading a named file safely (regular, bounded, UTF-8).
- ``source``: YAML with positions, the bounded composer, ``${ENV}`` substitution.
- ``secrets``: which values are secret, scrubbing them from messages, reading a secret
  (``*_env``, ``*_file``).
- ``explain``: pydantic's errors as plain sentences.
- ``topology``: the endpoint tree (duplicate ids, unknown parents, cycles).
- ``fields``: number checks shared by every section's model.
- ``patterns``, ``alerts``: the ``alerts:`` section.
- ``schema``: the field validators and the models (Timing, Endpoint, Config …).
- ``loading``: load_config, includes, the checks across files.
- ``writing``: an endpoint written back as YAML.
- ``inventory_import``: a CSV export turned into an inventory file.

The names below are loaded on first use, so that a sink importing ``config.fields`` does not
load the schema (which imports every sink).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from vcmon.config.files import Unreadable as Unreadable
    from vcmon.config.files import read_file as read_file
    from vcmon.config.loading import load_config as load_config
    from vcmon.config.problems import ConfigError as ConfigError
    from vcmon.config.problems import Problem as Problem
    from vcmon.config.problems import did_you_mean as did_you_mean
    from vcmon.config.schema import Config as Config
    from vcmon.config.schema import Endpoint as Endpoint
    from vcmon.config.schema import EndpointSpec as EndpointSpec
    from vcmon.config.schema import IcmpSettings as IcmpSettings
    from vcmon.config.schema import Level as Level
    from vcmon.config.schema import Timing as Timing

_EXPORTS: Final = {
    "Config": "schema",
    "ConfigError": "problems",
    "Endpoint": "schema",
    "EndpointSpec": "schema",
    "IcmpSettings": "schema",
    "Level": "schema",
    "Problem": "problems",
    "Timing": "schema",
    "Unreadable": "files",
    "did_you_mean": "problems",
    "load_config": "loading",
    "read_file": "files",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
