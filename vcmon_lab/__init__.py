"""The province lab: network namespaces, impairment profiles and a user-space ICMP responder.

Everything here serves tests, benchmarks, ``vcmon lab`` and the demo; the runtime package
(:mod:`vcmon`) never needs it. The daemon imports only :func:`vcmon_lab.netns.in_netns`, and
only when told to probe from a namespace (``--netns``). Installed with ``pip install .[lab]``.

The lab's data ships inside this package (``data/``): the 231-room province inventory, the
loopback demo config and the scenarios. The repository's ``config/province-231.yaml``,
``config/demo.yaml`` and ``config/scenarios`` are links to these files, not copies.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_file(*parts: str) -> Path:
    """A file shipped with the lab. A real path, not a resource handle: configs include their
    neighbours by path (demo.yaml names province-231.yaml)."""
    return Path(str(resources.files(__name__).joinpath("data", *parts)))


def scenario_file(name: str) -> Path:
    """``name`` as given when that file exists, else the shipped scenario of that name
    (``co-to-uplink`` or ``co-to-uplink.yaml``), else ``name`` so the error names it."""
    given = Path(name)
    if given.exists() or "/" in name:
        return given
    for candidate in (data_file("scenarios", name), data_file("scenarios", f"{name}.yaml")):
        if candidate.is_file():
            return candidate
    return given
