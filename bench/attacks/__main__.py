"""Every attack of issue 11 against a real `vcmon run` on loopback; prints attack | held? | figure.

python -m bench.attacks [--duration 30] [--only auth,mqtt,...]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.attacks import auth, edge, loader, mqtt, storage
from bench.attacks import secrets as secret_leaks
from bench.attacks.common import Row
from bench.attacks.flood import flood, scrape_loop
from bench.common import save

Group = Callable[[Path, float, dict[str, Any]], list[Row]]

# In the order of the list.
GROUPS: dict[str, Group] = {
    "auth": auth.attacks,
    "mqtt": mqtt.attacks,
    "edge": edge.attacks,
    "regex": edge.regex_attacks,
    "storage": storage.attacks,
    "flood": flood,
    "loader": loader.attacks,
    "secrets": secret_leaks.attacks,
}


def _run_group(name: str, group: Group, duration: float, notes: dict[str, Any]) -> list[Row]:
    """One group in a directory of its own; a group that breaks is a failed row, not a crash."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"vcmon-attacks-{name}-") as tmp:
        try:
            rows = group(Path(tmp), duration, notes.setdefault(name, {}))
        except Exception as exc:  # the bench reports it and goes on with the next group
            traceback.print_exc()
            rows = [(f"{name}: the bench itself", False, f"{type(exc).__name__}: {exc}")]
    notes[name]["seconds"] = round(time.monotonic() - t0, 1)
    print(f"[{name}: {len(rows)} rows in {notes[name]['seconds']} s]", file=sys.stderr)
    return rows


def _held(held: bool | None) -> str:
    return "skip" if held is None else "yes" if held else "NO"


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--scrape":
        scrape_loop(sys.argv[2], float(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of the HTTP flood")
    ap.add_argument("--only", default="", help=f"comma-separated groups of {', '.join(GROUPS)}")
    args = ap.parse_args()
    only = [g for g in args.only.split(",") if g] or list(GROUPS)
    unknown = sorted(set(only) - set(GROUPS))
    if unknown:
        ap.error(f"unknown group {unknown[0]}; expected some of {', '.join(GROUPS)}")
    # The flood's attackers need some 4,000 descriptors of their own.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    t0 = time.monotonic()
    notes: dict[str, Any] = {}
    rows = [row for name in only for row in _run_group(name, GROUPS[name], args.duration, notes)]
    width = max(len(r[0]) for r in rows)
    print(f"{'attack':<{width}} | held? | figure")
    for attack_name, held, figure in rows:
        print(f"{attack_name:<{width}} | {_held(held):<5} | {figure}")
    total = time.monotonic() - t0
    print(f"{sum(r[1] is True for r in rows)} held, {sum(r[1] is False for r in rows)} not, "
          f"{sum(r[1] is None for r in rows)} skipped; {total:.0f} s")  # fmt: skip
    if only == list(GROUPS):  # a partial run does not replace the recorded results
        save("attacks", {
            "duration_s": args.duration, "total_s": round(total, 1),
            "rows": [{"attack": a, "held": h, "figure": f} for a, h, f in rows],
            "details": json.loads(json.dumps(notes, default=str)),
        })  # fmt: skip


if __name__ == "__main__":
    main()
