"""Reading a lab process's ground truth: the JSON-lines file the responder and the services
write (one line per echo or message, and ``{"event": …}`` lines), followed across rotation."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")


def rotated(path: Path) -> Path:
    """Where a rotated truth file goes: ``truth.jsonl`` → ``truth.jsonl.1``."""
    return path.with_name(path.name + ".1")


class TruthReader(Generic[R]):
    """Incremental reader of a truth file: each :meth:`poll` parses the lines added since.

    Follows the file across a rotation (to ``<file>.1``) and a truncation. Record lines become
    ``record(**line)``; with ``keep_records`` off only events are kept (record lines are not
    even parsed), for controllers of a long-running lab that wait for events and must not hold
    every record in memory.
    """

    def __init__(self, path: Path, record: Callable[..., R], *, keep_records: bool = True) -> None:
        self.path = path
        self.record = record
        self.keep_records = keep_records
        self.records: list[R] = []
        self.events: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""
        self._inode: int | None = None

    def skip_to_end(self) -> Self:
        """Ignore what the file holds now; later polls read only lines appended after this."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._offset, self._inode = 0, None
        else:
            self._offset, self._inode = st.st_size, st.st_ino
        self._partial = b""
        return self

    def poll(self) -> Self:
        """Read whatever complete lines were appended since the last poll."""
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return self
        with fh:
            # The inode of what was opened, not of the path a moment later: no rotation race.
            st = os.fstat(fh.fileno())
            if self._inode is not None and st.st_ino != self._inode:
                self._finish_rotated()
            elif st.st_size < self._offset:  # truncated: start over
                self._offset, self._partial = 0, b""
            self._inode = st.st_ino
            fh.seek(self._offset)
            self._consume(fh.read())
        return self

    def find_event(self, kind: str, **match: Any) -> dict[str, Any] | None:
        """The latest event of ``kind`` whose fields include ``match``."""
        for ev in reversed(self.events):
            if ev.get("event") == kind and all(ev.get(k) == v for k, v in match.items()):
                return dict(ev)
        return None

    def _finish_rotated(self) -> None:
        """The file was rotated since the last poll: read the rest of it, then start afresh."""
        try:
            with rotated(self.path).open("rb") as old:
                if os.fstat(old.fileno()).st_ino == self._inode:
                    old.seek(self._offset)
                    self._consume(old.read())
                else:
                    log.warning("truth %s rotated twice between polls; lines lost", self.path)
        except FileNotFoundError:
            pass
        self._offset = 0
        self._partial = b""

    def _consume(self, chunk: bytes) -> None:
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            if not self.keep_records and not line.startswith(b'{"event"'):
                continue
            obj = json.loads(line)
            if "event" in obj:
                self.events.append(obj)
            elif self.keep_records:
                self.records.append(self.record(**obj))
