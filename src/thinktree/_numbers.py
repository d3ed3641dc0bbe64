"""Reading and writing numbers as people and language models write them.

Shared by :mod:`thinktree.extraction` and :mod:`thinktree.grading`. A number may carry a sign
(``-``, ``+``, the Unicode minus ``−`` or an en dash), thousands separators (``1,500``), a
decimal part, and an exponent (``1.2e-3``, ``1.2 × 10^3``). Whatever follows it is taken for a
unit (``mL/min``, ``%``, ``msec``) unless it makes the number ambiguous: ``3-4``, ``120/80``,
``1,5`` or ``1 2`` are not read at all rather than read as their first part.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

__all__ = [
    "LARGEST_SETTING",
    "NUMBER_TOKEN",
    "SEED_RANGE",
    "canonical_number",
    "is_bare_number",
    "parse_number",
    "token_value",
]

#: The most any count a run's settings hold may be: tokens, samples, steps, problems, the tokens
#: one problem may spend. Far past any real run, and small enough that the totals a run records
#: (tokens allowed over all its problems) stay inside the 64-bit integers of its JSON and SQLite.
LARGEST_SETTING = 10**12
#: The seeds a run may be given: a signed 64-bit integer, as its records hold it.
SEED_RANGE = (-(2**63), 2**63 - 1)

_SIGNS = "+−–-"  # "-" last, so that it stays literal inside a character class
_NEGATIVE_SIGNS = "-−–"

# ``(?!\d)`` after the grouped form makes "1,2345" fall back to "1", which the tail check refuses.
_MANTISSA = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_EXPONENT = (
    r"[eE](?P<exp>[+-]?\d+)"
    r"|\s*[×xX*·]\s*10\s*\^\s*[({]?\s*(?P<exp10>[-+−]?\d+)\s*[)}]?"
)

#: One number inside running text. A sign counts only where it cannot be a hyphen
#: ("CURB-65" holds no negative number), and a number never starts inside a word or another number.
NUMBER_TOKEN = re.compile(
    rf"(?:(?<![\w.,])(?P<sign>[{_SIGNS}])|(?<![\w.,{_SIGNS}]))"
    rf"(?=\.?\d)(?P<mant>{_MANTISSA})(?:{_EXPONENT})?"
)

# What may not directly follow a number: another digit, a separator joining it to a digit,
# or an operator of a formula it is a term of ("3.14 * (QT2 - QT1)", "12 + (4 × 2)"; not
# markdown's italics after it: "1 *(hemoptysis)*").
_BAD_TAIL = re.compile(r"\s*\d|[,./:\-−–+]\d|\s*[×*·^]\s*\d|\s*[×·^]\s*\(|\s*\*\s+\(|\s+\+\s+[\d(]")
_PREFIX = re.compile(
    r"\s*(?:≈|~|∼|≃|=|about\b|approx(?:imately\b|\.|\b)|around\b|roughly\b|circa\b|ca\.)?\s*",
    re.IGNORECASE,
)
_DECORATION = re.compile(r"[*$`]")

# Outside this range canonical_number writes an exponent.
_PLAIN_MIN = 1e-6
_PLAIN_MAX = 1e16


def token_value(match: re.Match[str]) -> float | None:
    """The value of a :data:`NUMBER_TOKEN` match; None when what follows makes it ambiguous."""
    if _BAD_TAIL.match(match.string, match.end()):
        return None
    exponent = match["exp"] or match["exp10"]
    literal = match["mant"].replace(",", "")
    if exponent:
        literal += "e" + exponent.replace("−", "-")
    value = float(literal)
    if match["sign"] and match["sign"] in _NEGATIVE_SIGNS:
        value = -value
    return value if math.isfinite(value) else None


def parse_number(text: str) -> float | None:
    """Read ``text`` as one number, allowing ``≈``/``~``/"about" before it and a unit after it.

    ``"1,500"`` → 1500.0, ``"-1.39 L"`` → -1.39, ``"≈ 2.5e-3 mg/dL"`` → 0.0025. Text that does not
    start with a number, or whose number is ambiguous (``"3-4"``, ``"1,5"``), gives None.
    """
    cleaned = _DECORATION.sub("", text)
    start = _PREFIX.match(cleaned)
    position = start.end() if start else 0
    match = NUMBER_TOKEN.match(cleaned, position)
    return token_value(match) if match else None


def is_bare_number(text: str) -> bool:
    """Whether ``text`` is one number and nothing else (``"12"``, ``" -1.5e3 "``, ``"1,500"``):
    no unit, no words, no ``≈``."""
    stripped = text.strip()
    match = NUMBER_TOKEN.match(stripped)
    return match is not None and match.end() == len(stripped) and token_value(match) is not None


def canonical_number(x: float) -> str:
    """Write ``x`` briefly: ``1.39``, ``-2``, ``1500``, ``0.00001``; ``1e20`` if huge or tiny.

    The digits are those of Python's shortest round-tripping ``repr``, so
    ``float(canonical_number(x)) == x`` for every finite ``x``.
    """
    if not math.isfinite(x):
        return repr(x)
    if x == 0:
        return "0"
    if _PLAIN_MIN <= abs(x) < _PLAIN_MAX:
        text = format(Decimal(repr(x)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    mantissa, _, exponent = repr(x).partition("e")
    if mantissa.endswith(".0"):
        mantissa = mantissa[:-2]
    return f"{mantissa}e{int(exponent)}"
