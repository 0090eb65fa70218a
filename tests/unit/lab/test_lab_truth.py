"""Ground truth across rotation: the responder caps its file, readers follow it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vcmon_lab.netns import Lab, LabNames
from vcmon_lab.profiles import Profile
from vcmon_lab.responder import TruthLog
from vcmon_lab.services import ServicesTruth
from vcmon_lab.truth import rotated


def echo(seq: int) -> str:
    return json.dumps(
        {"dst": "198.18.0.1", "src": "198.19.255.1", "id": 1, "seq": seq, "rx_ns": 1,
         "tx_ns": 2, "delay_ns": 1, "planned_ns": 1, "dropped": False}
    ) + "\n"  # fmt: skip


def ev(n: int) -> str:
    return json.dumps({"event": "reload", "t_ns": n, "ok": True}) + "\n"


def test_truth_log_reads_across_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "truth.jsonl"
    path.write_text(ev(1) + echo(1))
    truth = TruthLog(path)
    truth.poll()
    with path.open("a") as fh:
        fh.write(echo(2) + ev(2) + '{"event": "rel')  # a line still being written …
    truth.poll()
    with path.open("a") as fh:
        fh.write('oad", "t_ns": 3}\n' + echo(3))  # … finished just before the rotation
    os.replace(path, rotated(path))
    path.write_text(ev(4) + echo(4))
    truth.poll()
    assert [e["t_ns"] for e in truth.events] == [1, 2, 3, 4]
    assert [e.seq for e in truth.echoes] == [1, 2, 3, 4]
    with path.open("a") as fh:
        fh.write(echo(5))
    assert [e.seq for e in truth.poll().echoes] == [1, 2, 3, 4, 5]


def test_truth_log_can_keep_events_only(tmp_path: Path) -> None:
    path = tmp_path / "truth.jsonl"
    path.write_text(ev(1) + echo(1) + echo(2) + ev(2))
    truth = TruthLog(path, keep_echoes=False).poll()
    assert [e["t_ns"] for e in truth.events] == [1, 2]
    assert truth.echoes == []
    path.write_text(ev(3))  # truncated and written again: read from the start
    assert [e["t_ns"] for e in truth.poll().events] == [1, 2, 3]


def message(rx_ns: int) -> str:
    return json.dumps(
        {"service": "sip", "dst": "198.18.0.1", "src": "198.19.255.1", "sport": 5060,
         "dport": 5060, "rx_ns": rx_ns, "tx_ns": None, "delay_ns": None, "planned_ns": None,
         "dropped": True, "reason": "down"}
    ) + "\n"  # fmt: skip


def test_services_truth_reads_across_a_rotation(tmp_path: Path) -> None:
    # One reader for both processes: the services' truth follows a rotation too.
    path = tmp_path / "services.jsonl"
    path.write_text(ev(1) + message(1))
    truth = ServicesTruth(path).poll()
    with path.open("a") as fh:
        fh.write(message(2))
    os.replace(path, rotated(path))
    path.write_text(message(3) + ev(2))
    truth.poll()
    assert [r.rx_ns for r in truth.records] == [1, 2, 3]
    assert [r.reason for r in truth.records] == ["down"] * 3
    assert [e["t_ns"] for e in truth.events] == [1, 2]


def test_responder_rotates_its_truth(tmp_path: Path, require_root: None) -> None:
    lab = Lab(LabNames.for_run("rot"), tmp_path, die_with_parent=True, services=False)
    lab.responder.truth_max_bytes = 600  # a few events
    try:
        lab.start({"198.18.0.1": Profile(delay=0.001)})
        for i in range(12):  # each reload must still be seen, whatever was rotated meanwhile
            lab.set_profiles({"198.18.0.1": Profile(delay=0.001 + i / 1000)})
    finally:
        lab.stop()
    truth, old = tmp_path / "truth.jsonl", rotated(tmp_path / "truth.jsonl")
    assert old.exists()
    assert old.stat().st_size < 600 + 400  # one flush past the limit at most
    assert sum(1 for e in lab.responder.truth.events if e["event"] == "reload") == 12
    assert truth.stat().st_size < 600 + 400
