"""ASCII stand-ins for the symbols actstat prints, for a stdout that cannot encode them.

A Windows console redirected to a file, or any stream whose encoding is cp1252 or ASCII, cannot
hold `→`, `χ₁` or a sparkline's `▁▂▃`; writing them raises UnicodeEncodeError. Every character
such a stream cannot encode is written as the stand-in below (or `?` for one not listed), so
the output reads the same in ASCII: `post std 0.87 -> 0.33`, `chi1`, `_.:-=+*#`.
"""

from __future__ import annotations

import codecs
import functools
import io
from typing import Any, TextIO

STAND_INS = {
    "→": "->", "—": "-", "–": "-", "×": "x", "≥": ">=", "≤": "<=", "…": "...", "≈": "~",
    "±": "+/-", "∞": "inf", "·": "*", "√": "sqrt", "²": "^2", "χ": "chi", "₁": "1", "σ": "s",
    "φ": "phi", "π": "pi", "Δ": "d", "‖": "||", "│": "|", "─": "-", "✅": "[ok]", "❌": "[x]",
    # sparkline heights, lowest to highest, then histogram shades, lightest to darkest
    "▁": "_", "▂": ".", "▃": ":", "▄": "-", "▅": "=", "▆": "+", "▇": "*", "█": "#",
    "░": ".", "▒": ":", "▓": "%",
}


@functools.lru_cache(maxsize=8)
def _table(encoding: str) -> dict[int, str]:
    """The stand-ins this encoding needs: only for the characters it cannot encode itself."""
    return {ord(char): ascii for char, ascii in STAND_INS.items()
            if not _encodes(char, encoding)}


def _encodes(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def for_encoding(text: str, encoding: str) -> str:
    """`text` as `encoding` can hold it: listed symbols as their stand-ins, anything else it
    cannot encode as `?`; unchanged when it encodes as is (UTF-8, always)."""
    if _encodes(text, encoding):
        return text
    text = text.translate(_table(encoding))
    return text.encode(encoding, errors="replace").decode(encoding)


def needs_stand_ins(stream: Any) -> bool:
    """Whether `stream` (stdout, stderr) cannot encode actstat's symbols."""
    encoding = getattr(stream, "encoding", None)
    if not encoding:
        return False
    try:
        codecs.lookup(encoding)
    except LookupError:
        return False
    return not _encodes("".join(STAND_INS), encoding)


class StandIns(io.TextIOBase):
    """A text stream that writes through to `stream`, symbols it cannot encode replaced."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding

    def write(self, text: str) -> int:
        self.stream.write(for_encoding(text, self.stream.encoding))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()
