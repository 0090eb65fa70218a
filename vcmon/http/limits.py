"""Process limits the daemon sets for itself at start."""

from __future__ import annotations

import logging
import resource

from vcmon.logs import event

log = logging.getLogger(__name__)


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one; the soft limit now in force.

    The usual soft limit of 1024 is what a few hundred idle HTTP clients use up, and then
    probes and the resolver get no descriptor either. Failure (a sandbox that forbids
    setrlimit) keeps the old limit and says so once.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        event(log, logging.INFO, "fd_limit", soft=soft, hard=hard)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        event(log, logging.WARNING, "fd_limit_not_raised", soft=soft, hard=hard, error=str(exc))
        return soft
    event(log, logging.INFO, "fd_limit", soft=hard, hard=hard, was=soft)
    return hard
