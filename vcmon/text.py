"""Text helpers shared by config, messages and sinks: ASCII folding and slugs."""

from __future__ import annotations

import re
import unicodedata


def ascii_fold(text: str) -> str:
    """``text`` without diacritics: 'Đồng Tiến' → 'Dong Tien'."""
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def slugify(text: str, sep: str = "-") -> str:
    """A lower-case ASCII slug of ``text``: 'Cô Tô / Đồng Tiến' → 'co-to-dong-tien'."""
    return re.sub(r"[^a-z0-9]+", sep, ascii_fold(text).lower()).strip(sep)
