"""Reading a file the config names without hanging or filling memory: regular files only,
bounded in size, decoded as UTF-8 with the position of a bad byte."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final

from vcmon.config.problems import Problem

# Limits that keep a hostile or broken file from exhausting the daemon (see README, limits).

MAX_FILE_BYTES: Final = 16 * 1024 * 1024  # each file read: config, include, CSV, secret file


def decode_text(raw: bytes, name: str) -> tuple[str | None, Problem | None]:
    """``raw`` as text (a UTF-8 BOM is allowed), or a problem saying where it is not UTF-8."""
    try:
        return raw.decode("utf-8-sig"), None  # a BOM from Windows editors is harmless
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        problem = Problem(
            name,
            "",
            f"byte 0x{raw[exc.start]:02x} is not UTF-8 text (save the file as UTF-8)",
            raw.count(b"\n", 0, exc.start) + 1,
            exc.start - line_start + 1,
        )
        return None, problem


class Unreadable(Exception):
    """A file that could not be read at all; the argument says why in plain words."""


_FILE_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def os_reason(exc: OSError, expected: str) -> str:
    if exc.errno == errno.ENOENT:
        return "file not found"
    if exc.errno == errno.ELOOP:
        return f"is a symbolic link loop (too many levels of symbolic links), expected {expected}"
    if exc.errno == errno.EISDIR:
        return f"is a directory, not a regular file (expected {expected})"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied (expected {expected} vcmon may read)"
    if exc.errno == errno.ENOTDIR:
        return "file not found (a part of the path is not a directory)"
    return f"cannot read: {exc.strerror or exc}"


def _not_regular(mode: int, expected: str) -> str | None:
    """Why a file of ``mode`` is refused, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    what = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return f"is {what}, not a regular file (expected {expected})"


def _too_big(size: int, limit: int, expected: str) -> str:
    return (
        f"is larger than the {limit // (1024 * 1024)} MiB limit "
        f"({size // (1024 * 1024)} MiB or more; expected {expected} of at most that)"
    )


def check_regular_file(path: str | Path, expected: str, limit: int = MAX_FILE_BYTES) -> str | None:
    """Why ``path`` cannot be read as a file, judged without opening it; None when it may be."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return os_reason(exc, expected)
    except ValueError:  # a NUL byte in the name
        return f"is not a usable file name (expected {expected})"
    reason = _not_regular(st.st_mode, expected)
    if reason is None and st.st_size > limit:
        reason = _too_big(st.st_size, limit, expected)
    return reason


def read_file(path: str | Path, expected: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; Unreadable saying why
    not (missing, a FIFO or device, a symlink loop, no permission, too large)."""
    reason = check_regular_file(path, expected, limit)
    if reason is not None:
        raise Unreadable(reason)
    # Non-blocking, so a file swapped for a FIFO since the stat cannot hang the open; the fstat
    # then judges the file actually opened.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise Unreadable(os_reason(exc, expected)) from None
    try:
        st = os.fstat(fd)
        reason = _not_regular(st.st_mode, expected)
        if reason is not None:
            raise Unreadable(reason)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # one byte more than the limit tells a file that grew
            chunk = os.read(fd, min(1024 * 1024, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise Unreadable(_too_big(size, limit, expected))
        return b"".join(chunks)
    except OSError as exc:
        raise Unreadable(os_reason(exc, expected)) from None
    finally:
        os.close(fd)
