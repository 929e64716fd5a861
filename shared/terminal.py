"""Strings from elsewhere, made safe to show on a terminal: pure functions, no I/O.

A client id, a user name or a reason stored by the broker may carry escape sequences (clear
the screen, set the window title, forge table lines), bidi overrides that reorder what is
shown, zero-width characters, or letters that look like ASCII but are not (a Cyrillic er, U+0440,
in a service name). Everything the CLI and ``access-broker`` print as text goes through one of:

``name(s)`` (identifiers: service, user and service-account names, grant ids, targets,
client ids, scopes, groups): every character outside printable ASCII is escaped, so a name
on screen is plain ASCII and two different names never look the same. A backslash is
doubled for the same reason (the text ``\\x1b`` and an ESC character look different).

``text(s)`` (free text: reasons, messages, error hints): control and format characters are
escaped; printable letters, marks, digits, punctuation and symbols of any script are kept;
a backslash is kept as it is (free text is read, not compared).

Always escaped, in both: C0 controls (newline and tab too), DEL, C1 controls, every Unicode
format character (bidi embeddings, overrides and isolates U+202A-U+202E, U+2066-U+2069, the
marks U+200E/U+200F/U+061C, zero-width U+200B-U+200D, U+2060, U+FEFF, soft hyphen), line and
paragraph separators U+2028/U+2029, spaces other than U+0020, surrogates, private-use and
unassigned code points. The escapes are Python's: ``\\n``, ``\\r``, ``\\t``, ``\\xNN``
(below U+0100), ``\\uNNNN``, ``\\UNNNNNNNN``. ``name(s)`` output is printable ASCII, so
``text(name(s)) == name(s)``: a line built from escaped names and free text stays as built.
JSON output is never passed through these: it is exact.
"""

from __future__ import annotations

import unicodedata

__all__ = ["name", "text"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Categories shown as they are in free text: letters, marks, numbers, punctuation, symbols.
_KEPT = frozenset("LMNPS")


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    point = ord(char)
    if point < 0x100:
        return f"\\x{point:02x}"
    if point < 0x10000:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def _shown_in_text(char: str) -> bool:
    if " " <= char <= "~":
        return True
    if char < "\xa0":  # C0, DEL, C1
        return False
    return unicodedata.category(char)[0] in _KEPT


def name(value: str) -> str:
    """``value`` as printable ASCII: anything else, and the backslash, written as an escape."""
    if value.isascii() and value.isprintable() and "\\" not in value:
        return value  # the common case, without building a new string
    return "".join(
        "\\\\" if char == "\\" else char if " " <= char <= "~" else _escape(char) for char in value
    )


def text(value: str) -> str:
    """``value`` with control, format, separator and invisible characters escaped."""
    if value.isascii() and value.isprintable():
        return value
    return "".join(char if _shown_in_text(char) else _escape(char) for char in value)
