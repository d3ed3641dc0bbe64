"""Make untrusted text (model output, problem data) safe to put on a terminal.

Text reaches the screen only through :class:`rich.text.Text` built from the cleaned
string, never through markup, so ``[bold red]`` stays literal. Control characters are
replaced by visible stand-ins, so an ESC sequence in model output shows as ``␛[2J``
instead of clearing the screen. The commands' console output uses the same cleaning
(:func:`printable` for a string rich reads as markup).
"""

from __future__ import annotations

import re

from rich.markup import escape
from rich.text import Text

# C0 controls except tab and newline, DEL, C1 controls, and the Unicode bidi overrides
# and isolates (which can make text read differently from what it is).
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"\s+")


def _stand_in(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # the Control Pictures block: ␛, ␍, ␀, …
    if code == 0x7F:
        return "␡"
    return "\ufffd"


def clean(text: str) -> str:
    """``text`` with every terminal control character replaced by a visible stand-in."""
    return UNSAFE.sub(_stand_in, text.replace("\r\n", "\n"))


def one_line(text: str, limit: int | None = None) -> str:
    """Clean ``text`` and fold it onto one line, cut to ``limit`` characters with '…'.

    With a ``limit``, only as much of a long text is read as fills it (a row is drawn
    often, and an answer or an error may be megabytes long).
    """
    if limit is not None:
        size = 2 * limit + 16
        while size < len(text):
            flat = _flat(text[:size])
            # its end may differ from the whole text's (a space, a "\r" of a "\r\n" cut in
            # two): what is shown before it does not
            if len(flat) > limit + 2:
                return flat[: max(limit - 1, 0)] + "…"
            size *= 8
    flat = _flat(text)
    if limit is not None and len(flat) > limit:
        return flat[: max(limit - 1, 0)] + "…"
    return flat


def _flat(text: str) -> str:
    return _SPACES.sub(" ", clean(text)).strip()


def printable(text: str) -> str:
    """``text`` for a string rich reads as markup: shown as written, controls made visible."""
    return escape(clean(text))


def literal(text: str, style: str = "") -> Text:
    """A rich Text that shows ``text`` exactly as written (no markup, no controls)."""
    return Text(clean(text), style=style)
