"""A lab process in a network namespace (the responder, the services): spawning it or
attaching to one by pid, signals, waiting on its truth file's events, stopping it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vcmon_lab.truth import TruthReader

log = logging.getLogger(__name__)


class LabProcessError(RuntimeError):
    """A lab process did not start, reload or stop as asked, or a wait on it timed out."""


def pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as gone)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            # The state letter follows the command name, which is in parentheses.
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.002
) -> None:
    """Poll ``condition`` until true; raise LabProcessError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise LabProcessError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], bool], within: float, what: str, *, interval: float = 0.002
) -> None:
    """Like :func:`wait_until`, without blocking the event loop."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            raise LabProcessError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(interval)


class NamespaceProcess:
    """A lab process inside a network namespace, started here or attached to by its pid
    (when ``vcmon lab up`` started it): spawning, signals, its log, its events, stopping."""

    name = "process"  # in messages
    error: type[LabProcessError] = LabProcessError

    def __init__(self, netns: str, log_path: Path, truth: TruthReader[Any]) -> None:
        self.netns = netns
        self.log_path = log_path
        self.truth = truth
        self._proc: subprocess.Popen[bytes] | None = None
        self._attached: int | None = None  # pid of one another process started

    @property
    def pid(self) -> int | None:
        return self._attached if self._proc is None else self._proc.pid

    def attach(self, pid: int) -> None:
        """Control a process started by another one (``vcmon lab up``), by its pid."""
        if self._proc is not None:
            raise self.error(f"{self.name} already started by this controller")
        self._attached = pid
        self.truth.skip_to_end()  # its history is not ours to wait through

    def stop(self, *, timeout: float = 5.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code, None if not ours."""
        code = self._terminate(timeout)
        self.truth.poll()
        return code

    def _spawn(self, command: list[str]) -> None:
        # The child must import this very package (and vcmon beside it), wherever the test
        # run found them.
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with self.log_path.open("ab") as log_fh:
            # `ip netns exec` execs in place, so the Popen pid is the child's own. Always its
            # own session: the terminal's Ctrl-C goes to the demo, which then restores and
            # stops the lab in order; PDEATHSIG still ends a tied child.
            self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh, env=env,
                start_new_session=True,
            )  # fmt: skip

    def _wait_event(
        self, before: int, kind: str, digest: str | None, timeout: float
    ) -> dict[str, Any]:
        """The first ``kind`` event after the ``before`` events already read (with the profiles
        ``digest`` when given); raise if the process exits or rejects its profiles."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            self._require()
            for ev in self.truth.poll().events[before:]:
                if ev.get("event") != kind:
                    continue
                if ev.get("ok") is False:
                    raise self.error(f"{self.name} rejected the profiles: {ev.get('error')}")
                if digest is None or ev.get("sha256") == digest:
                    found.append(ev)
                    return True
            return False

        try:
            wait_until(seen, timeout, f"the {self.name}'s {kind} event")
        except self.error:
            raise
        except LabProcessError as exc:  # the timeout, in this process's own error
            raise self.error(str(exc)) from None
        return found[0]

    def _terminate(self, timeout: float) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code, None if not ours."""
        proc, self._proc = self._proc, None
        attached, self._attached = self._attached, None
        if proc is None:
            if attached is not None and pid_alive(attached):
                os.kill(attached, signal.SIGTERM)
                wait_until(lambda: not pid_alive(attached), timeout, f"the {self.name} to stop")
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s %d ignored SIGTERM, killing it", self.name, proc.pid)
                proc.kill()
                proc.wait()
        return proc.returncode

    def _require(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is not None:
                raise self.error(
                    f"{self.name} exited with {self._proc.returncode}: {self._log_tail()}"
                )
        elif self._attached is None or not pid_alive(self._attached):
            raise self.error(f"{self.name} is not running: {self._log_tail()}")

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None:
            self._proc.send_signal(sig)
        elif self._attached is not None:
            os.kill(self._attached, sig)

    def _log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:].strip()
        except FileNotFoundError:
            return ""
